"""REGISTER: registration engines (one module each) and the batch step that warps their results.

Engines are imported lazily through :func:`slimreg.register.engine.get_engine`, so VALIS and torch load only
when the valis engine runs.
"""
