"""The AllSky night simulator's internals; the public entry point is `training.simulate`.

    astro       time, Sun, sidereal rotation, coordinate frames
    camera      one camera: fisheye geometry, skyline, star catalogue, sensor defects, overlay
    sky         smooth light: night sky, towns, Milky Way, twilight, Moon, clouds
    transients  meteors, satellites, aircraft, flashes
    night       NightParams, the per-frame renderer, iter_night

Pure numpy/OpenCV: no torch, no matplotlib.
"""
