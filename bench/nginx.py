"""nginx configurations: the plain-HTTP backend and the TLS proxy tlsproxy is compared with."""

from __future__ import annotations

from pathlib import Path

from bench.fixtures import SMALL_BODY, Fixtures

# Lua upload sink: reads the whole request body in 64 KiB pieces and throws it away, then
# answers with the byte count. nginx's `return` would answer first and discard the body
# behind the proxy's back.
_UPLOAD_SINK = r"""
        content_by_lua_block {
            local sock, err = ngx.req.socket()
            if not sock then
                ngx.status = 400
                ngx.say(err)
                return
            end
            local total = 0
            while true do
                local data, rerr, partial = sock:receive(65536)
                if data then
                    total = total + #data
                else
                    if partial then total = total + #partial end
                    if rerr ~= "closed" then
                        ngx.status = 400
                        ngx.say("body read failed after ", total, " bytes: ", rerr)
                        return
                    end
                    break
                end
            end
            ngx.say(total)
        }
"""


def _common(root: Path, name: str, modules: Path, *, lua: bool) -> str:
    load = (
        f"load_module {modules}/ndk_http_module.so;\n"
        f"load_module {modules}/ngx_http_lua_module.so;\n"
        if lua
        else ""
    )
    tmp = root / f"{name}-tmp"
    tmp.mkdir(exist_ok=True)
    return f"""{load}daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
user root;
pid {root}/{name}.pid;
error_log {root}/{name}-error.log warn;
events {{
    worker_connections 8192;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_max_body_size 0;
"""


def backend_conf(fx: Fixtures, *, port: int, modules: Path) -> str:
    """The plain-HTTP backend both proxies forward to (pinned to the load generator's core)."""
    small = SMALL_BODY.decode().rstrip("\n")
    return (
        _common(fx.root, "backend", modules, lua=True)
        + f"""    sendfile on;
    tcp_nopush on;
    open_file_cache max=16;
    open_file_cache_valid 600s;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        root {fx.www};
        location = /small {{ default_type text/plain; return 200 "{small}\\n"; }}
        location = /1m {{ }}
        location = /big {{ }}
        location = /upload {{
            lua_need_request_body off;
{_UPLOAD_SINK}        }}
    }}
}}
"""
    )


def proxy_conf(fx: Fixtures, *, name: str, port: int, backend_port: int, modules: Path) -> str:
    """nginx as the reference TLS proxy: streaming both ways, upstream keep-alive.

    It does the same work tlsproxy does per request: TLS 1.2+ with the same certificate,
    ALPN h2 and http/1.1 (``listen ... ssl http2``: nginx 1.22 has no ``http2 on;``),
    HTTP/1.1 to the backend over pooled connections, forwarded headers added. Session
    resumption stays at nginx's default (tickets on), as in tlsproxy; the handshake scenario's
    client never offers a session, so every connection there is a full handshake.

    Upgrades (websockets) are forwarded as tlsproxy forwards them: ``Upgrade`` passed on and
    ``Connection: upgrade`` when the client asked for one. Without an ``Upgrade`` header the map
    gives ``Connection: ""`` (no header), as before, so pooled upstream connections stay
    keep-alive for ordinary requests. The ws scenarios run a second copy of this configuration
    whose ``backend_port`` is the websocket echo server.
    """
    return (
        _common(fx.root, name, modules, lua=False)
        + f"""    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=4096;
        ssl_certificate {fx.cert};
        ssl_certificate_key {fx.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=$http_host";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""
    )
