"""Built-in xpnet backends (installed as ``xpnet.backends``): numpy, numba, cupy. Each module is imported only
when its backend is selected, so importing xpnet never imports numba or cupy."""
