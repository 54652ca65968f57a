"""Where the explorer is served: the default address and the URL a browser on this
machine uses (light: `solu demo` prints these links without importing Streamlit)."""
from __future__ import annotations

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8501
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def app_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """Where a browser on this machine reaches the app served on host:port (every interface
    and 'localhost' included: 127.0.0.1, the address the app binds by default)."""
    if host in ("127.0.0.1", "localhost", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"
