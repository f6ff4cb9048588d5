"""The pages' shell: one dark stylesheet for a reading-room monitor, no external assets.

Everything is inline (style and the small scripts) because a hospital network rarely
reaches a CDN, and the Content-Security-Policy then allows nothing from elsewhere. Data
reaches the pages escaped (``html.escape`` on the server, ``textContent`` in scripts),
never as markup.
"""

from __future__ import annotations

import html
from typing import Final

from fastapi.responses import HTMLResponse

#: Nothing from elsewhere; inline style and script only (the pages are ours alone).
CSP: Final = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

STYLE: Final = """
:root { color-scheme: dark; }
body { background: #0b0d10; color: #e8e8e8; font: 20px/1.4 system-ui, sans-serif; margin: 0; }
header { display: flex; gap: 1.5em; align-items: center; padding: .5em 1em;
         background: #151a21; border-bottom: 1px solid #2a313b; }
header h1 { font-size: 1.2em; margin: 0; }
header .who { margin-left: auto; color: #9aa4b1; }
header .who button.link { background: none; border: none; color: inherit; font: inherit;
  text-decoration: underline; cursor: pointer; padding: 0; }
a { color: #7cc4ff; }
main { padding: 1em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #232a33; }
th { color: #9aa4b1; font-weight: 600; font-size: .85em; text-transform: uppercase; }
tr.positive td:first-child { border-left: 6px solid #ff4d4d; }
tr.row:hover { background: #18202a; cursor: pointer; }
.chip { display: inline-block; border-radius: 1em; padding: .05em .6em; margin: .1em;
        font-size: .85em; background: #2a313b; color: #c9d1d9; }
.chip.present { background: #b3261e; color: #fff; font-weight: 700; }
.state { font-weight: 600; }
.state.failed, .dl.failed { color: #ff8a80; }
.state.done, .dl.sent { color: #8fd694; }
.dl.pending, .state.processing, .state.queued { color: #ffd166; }
.filters { display: flex; gap: 1em; margin-bottom: .8em; align-items: center; }
select, input, button { font: inherit; background: #1c232c; color: #e8e8e8;
        border: 1px solid #3a4350; border-radius: .3em; padding: .2em .5em; }
button { cursor: pointer; }
button:hover { background: #273140; }
.banner { background: #8b0000; color: #fff; text-align: center; font-weight: 700;
          padding: .2em; letter-spacing: .05em; }
.error { color: #ff8a80; }
.muted { color: #8a94a3; }
.login { max-width: 22em; margin: 4em auto; display: grid; gap: .7em; }
img.panel { max-width: 100%; width: 900px; border: 1px solid #2a313b; }
.cols { display: flex; flex-wrap: wrap; gap: 2em; }
.cols > section { flex: 1 1 28em; }
"""

LOGIN_PAGE: Final = """
<form class="login" method="post" action="/login">
  <h2>ICH triage worklist</h2>
  <p class="error" id="error">{error}</p>
  <input type="hidden" name="next" value="{next}">
  <label>User <input name="username" autocomplete="username" autofocus required></label>
  <label>Password <input name="password" type="password"
         autocomplete="current-password" required></label>
  <button type="submit">Log in</button>
</form>
"""


def page(
    title: str, body: str, *, user: str | None = None, csrf: str = "", status_code: int = 200
) -> HTMLResponse:
    """A whole page around ``body`` (markup already escaped by the caller)."""
    who = (
        f'<form class="who" method="post" action="/logout">{html.escape(user)} · '
        f'<input type="hidden" name="csrf" value="{html.escape(csrf, quote=True)}">'
        '<button type="submit" class="link">log out</button></form>'
        if user
        else ""
    )
    text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{html.escape(csrf, quote=True)}">
<title>{html.escape(title)} - ICH triage</title><style>{STYLE}</style></head>
<body><div class="banner">AI TRIAGE - NOT FOR DIAGNOSTIC USE</div>
<header><h1><a href="/">ICH triage worklist</a></h1>{who}</header>
<main>{body}</main></body></html>"""
    return HTMLResponse(
        text,
        status_code=status_code,
        headers={
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )
