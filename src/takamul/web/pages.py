"""What screens answer with: whole pages in the frame, or fragments for htmx."""

from __future__ import annotations

from fastapi.responses import HTMLResponse

from takamul.web.context import Viewer, WebServices
from takamul.web.render import render

__all__ = ["fragment", "page"]

_NO_STORE = {"Cache-Control": "no-store"}  # pages of patient data stay out of caches


def page(
    web: WebServices, viewer: Viewer, template: str, http_status: int = 200, **ctx: object
) -> HTMLResponse:
    """A whole page in the frame (navigation of the screens this viewer may use)."""
    screens = [s for s in web.screens if s.allowed(viewer)]
    html = render(template, viewer.prefs, viewer=viewer, screens=screens, **ctx)
    return HTMLResponse(html, http_status, headers=_NO_STORE)


def fragment(viewer: Viewer, template: str, http_status: int = 200, **ctx: object) -> HTMLResponse:
    """A part of a page, for an htmx swap."""
    html = render(template, viewer.prefs, viewer=viewer, **ctx)
    return HTMLResponse(html, http_status, headers=_NO_STORE)
