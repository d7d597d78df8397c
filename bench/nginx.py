"""nginx as a keep-alive reverse proxy in a temporary prefix, run as the current user."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from pathlib import Path

CANDIDATES = ("nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx")

CONFIG = """\
{user}worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream model {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    """The nginx executable, or None when it is not installed."""
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def user_directive() -> str:
    """As root, keep the worker on the current user instead of nginx's default `nobody`."""
    if os.geteuid() != 0:
        return ""
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    return f"user {user} {group};\n"


def write_config(prefix: Path, port: int, upstream_port: int) -> Path:
    """Write nginx.conf for a proxy on `port` to the upstream on `upstream_port`."""
    prefix.mkdir(parents=True, exist_ok=True)
    text = CONFIG.format(
        user=user_directive(), prefix=prefix, port=port, upstream_port=upstream_port
    )
    path = prefix / "nginx.conf"
    path.write_text(text)
    return path


def nginx_argv(executable: str, prefix: Path, config: Path) -> list[str]:
    """The command line: prefix and error log in the temporary directory, daemon off."""
    return [executable, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")]
