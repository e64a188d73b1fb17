"""Boot environments (bootenvs/*.yaml) and the iPXE templates they render (templates/*.j2).

A package only so that a wheel carries these files next to `appliance`, which finds them as
`<site-packages>/pxe` (appliance/pxe.py); there is no code here.
"""
