"""The image holds real files only, its policies validate, and its healthcheck works."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from guardproxy.testing import proxy_settings, running_proxy, serving, upstream_app

from .buildcontext import arguments, build, ignore_rules, ignored, instructions
from .manifests import POLICIES, ROOT

GUARDPROXY = str(Path(sys.executable).with_name("guardproxy"))  # the installed command
OCI = ("title", "description", "version", "revision", "licenses")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the Dockerfile's COPY instructions put into the image."""
    root = tmp_path_factory.mktemp("image")
    build(ROOT, root)
    return root


def policies_env() -> str:
    """Where the image's environment says the policies are."""
    (env,) = [rest for word, rest in instructions(ROOT / "Dockerfile") if word == "ENV"]
    found = re.search(r"GUARDPROXY_POLICIES=(\S+)", env)
    assert found
    return found.group(1)


def test_the_image_holds_no_links(image: Path) -> None:
    links = [p for p in image.rglob("*") if p.is_symlink()]
    assert links == [], f"COPY would carry these links: {links}"


def test_the_image_policies_are_the_repository_policies(image: Path) -> None:
    copied = image / policies_env().lstrip("/")
    names = sorted(p.name for p in copied.iterdir())
    assert names == sorted(p.name for p in POLICIES.glob("*.yaml"))
    for path in copied.iterdir():
        assert path.is_file() and not path.is_symlink(), path.name
        assert path.read_bytes() == (POLICIES / path.name).read_bytes()


async def test_guardproxy_validate_accepts_the_image_policies(image: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        GUARDPROXY,
        "validate",
        str(image / policies_env().lstrip("/")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()


def test_pip_install_finds_what_it_needs(image: Path) -> None:
    source = image / "src"
    assert (source / "pyproject.toml").is_file() and (source / "README.md").is_file()
    packaged = [p for p in (source / "guardproxy").rglob("default.yaml")]
    assert [p.read_bytes() for p in packaged] == [(POLICIES / "default.yaml").read_bytes()]
    assert not list(source.rglob("__pycache__")), ".dockerignore keeps caches out"


def test_the_copy_model_keeps_links_as_docker_does(tmp_path: Path) -> None:
    # The failure this guards against: a policy that links outside the copied directory.
    context = tmp_path / "context"
    (context / "policies").mkdir(parents=True)
    (context / "real.yaml").write_text("region: default\n")
    (context / "policies" / "default.yaml").symlink_to("../real.yaml")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY policies /etc/p\n")
    build(context, tmp_path / "image")
    copied = tmp_path / "image" / "etc" / "p" / "default.yaml"
    assert copied.is_symlink() and not copied.exists(), "a dangling link, as in a real image"


def test_dockerignore_rules_follow_docker() -> None:
    rules = ignore_rules(ROOT)
    assert not ignored("guardproxy/policy/default.yaml", rules)
    assert not ignored("policies/sg.yaml", rules)
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "policies/Kustomization"):
        assert ignored(path, rules), path
    assert ignored("guardproxy/__pycache__/cli.cpython-311.pyc", rules)


def test_oci_labels_and_a_numeric_user() -> None:
    steps = instructions(ROOT / "Dockerfile")
    labels = " ".join(rest for word, rest in steps if word == "LABEL")
    for key in OCI:
        assert f"org.opencontainers.image.{key}=" in labels, key
    (user,) = [rest for word, rest in steps if word == "USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "numeric, non-root, so runAsNonRoot can check"
    assert steps[-1] == ("ENTRYPOINT", '["guardproxy", "serve"]')


def healthcheck() -> list[str]:
    """The HEALTHCHECK command, exec form."""
    (rest,) = [rest for word, rest in instructions(ROOT / "Dockerfile") if word == "HEALTHCHECK"]
    command = arguments(rest[rest.index("CMD") + 3 :].strip())
    assert command[0] == "python" and "curl" not in rest and "wget" not in rest
    return command


async def run_healthcheck(admin: str) -> int:
    """The image's healthcheck with GUARDPROXY_ADMIN set; its exit code."""
    _, *args = healthcheck()
    env = {**os.environ, "GUARDPROXY_ADMIN": admin}
    process = await asyncio.create_subprocess_exec(sys.executable, *args, env=env)
    return await process.wait()


async def test_the_healthcheck_asks_the_admin_port() -> None:
    async with serving(upstream_app()) as upstream, running_proxy(proxy_settings(upstream)) as p:
        port = p.admin_url.rsplit(":", 1)[1]
        assert await run_healthcheck(f"0.0.0.0:{port}") == 0
        assert await run_healthcheck(f"127.0.0.1:{port}") == 0
        data_port = p.url.rsplit(":", 1)[1]  # answers, but /healthz is not there
        assert await run_healthcheck(f"127.0.0.1:{data_port}") != 0
