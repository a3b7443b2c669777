"""What the web app's tests share: the token their servers use and the headers that carry it."""

#: every test server's token (App(token=...)); a real server draws its own at start
TOKEN = "test-token-d1c3"
#: the header an API client sends it in
AUTH = {"X-Cnnlab-Token": TOKEN}


def signed_in(base: str, page: str = "/") -> str:
    """The address a browser opens first: with the token, which the page keeps as a cookie."""
    return f"{base}{page}?token={TOKEN}"
