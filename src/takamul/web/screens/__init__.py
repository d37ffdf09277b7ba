"""The screens of the web application. Each screen module has a ``SCREEN``
(``takamul.web.context.Screen``: its place in the navigation and who may see it) and
``register(router, web)`` for its routes. Adding a screen is adding a module here and its name
to ``takamul.web.app.SCREEN_MODULES``: the frame (sign-in, preferences, navigation, security
headers, auditing) does not change."""
