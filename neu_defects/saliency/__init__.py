"""Why a classifier decided: class activation maps, their rendering, and how well they localise defects.

``cam`` holds the maths, ``layers`` and ``settings`` where and how a net is explained, ``render``
the overlays and grids, ``localisation`` the scores against boxes, ``plots`` their figure and
``callback`` the Lightning callback that puts it all in a run.
"""
