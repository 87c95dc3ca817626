"""Access control at the centre: accounts, roles scoped to areas, browser sessions with CSRF, API
tokens, login throttling and the hash-chained audit log. See docs/security.md.

Other packages use :func:`scheduler.access.deps.require` and :class:`scheduler.access.deps.Principal`.
"""
