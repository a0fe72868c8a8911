"""Recording: hooks that capture every block's features while a pipeline samples (``recorder``) and the on-disk
store they stream into and are read back from (``store``)."""
