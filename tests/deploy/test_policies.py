"""policies/ is the one copy of the policies: the ConfigMap, the image and the package agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .manifests import (
    POLICIES,
    ROOT,
    kustomization,
    kustomization_file,
    named,
    needs_kustomize,
    one,
    render,
    roots,
)

GUARDPROXY = str(Path(sys.executable).with_name("guardproxy"))  # the installed command
POLICY_FILES = sorted(p.name for p in POLICIES.glob("*.y*ml"))


def embedded_default() -> Path:
    """The default policy packaged inside guardproxy (wherever the package keeps it)."""
    (found,) = [p for p in (ROOT / "guardproxy").rglob("default.yaml")]
    return found


def test_policy_files_are_regular_files() -> None:
    assert POLICY_FILES, "policies/ holds no policy"
    for entry in POLICIES.iterdir():
        assert not entry.is_symlink(), f"{entry.name} is a link; COPY and kustomize keep links"
        assert entry.is_file(), entry.name


def test_embedded_default_is_byte_identical_to_policies_default() -> None:
    # Two files, one content: edit policies/default.yaml and copy it over the packaged one.
    packaged = embedded_default()
    assert packaged.read_bytes() == (POLICIES / "default.yaml").read_bytes(), (
        f"{packaged.relative_to(ROOT)} differs from policies/default.yaml: "
        f"cp policies/default.yaml {packaged.relative_to(ROOT)}"
    )


def test_the_kustomization_beside_the_policies_is_no_policy() -> None:
    path = kustomization_file(POLICIES)
    assert path is not None and path.name == "Kustomization"
    assert path.suffix not in (".yaml", ".yml"), "guardproxy would read it as a policy"


def test_guardproxy_validate_accepts_the_directory() -> None:
    done = subprocess.run(
        [GUARDPROXY, "validate", str(POLICIES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_generator_lists_every_policy_file_and_only_those() -> None:
    generator = one(kustomization(POLICIES)["configMapGenerator"], name="guardproxy-policies")
    assert sorted(generator["files"]) == POLICY_FILES
    assert all("/" not in f for f in generator["files"]), "files must sit beside it"
    assert generator["options"]["disableNameSuffixHash"] is True


def test_no_other_kustomization_copies_the_policies() -> None:
    # One source of truth: an overlay takes the ConfigMap from policies/; an example that
    # serves other models ships its own policies, valid and never a copy of these.
    ours = {p.read_bytes() for p in POLICIES.glob("*.y*ml")}
    for root in roots():
        if root == POLICIES:
            continue
        for generator in kustomization(root).get("configMapGenerator", []):
            if generator["name"] != "guardproxy-policies":
                continue
            files = [root / name for name in generator["files"]]
            assert not {f.read_bytes() for f in files} & ours, f"{root} copies policies/"
            done = subprocess.run(
                [GUARDPROXY, "validate", str(root)], capture_output=True, text=True, check=False
            )
            assert done.returncode == 0, done.stdout + done.stderr


@needs_kustomize
def test_the_rendered_configmap_holds_the_files_byte_for_byte() -> None:
    configmap = named(render(POLICIES), "ConfigMap", "guardproxy-policies")
    assert sorted(configmap["data"]) == POLICY_FILES
    for name in POLICY_FILES:
        assert configmap["data"][name] == (POLICIES / name).read_text(encoding="utf-8")
