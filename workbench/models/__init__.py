"""The shipped models and everything about them: the procedural data (``data``), the class-conditional pipeline
(``pipeline``), loading any pipeline (``zoo``), the judge classifier (``classifier``), scheduler names
(``schedulers``) and training (``train``). The weights folders (``tiny-unet/``, ``tiny-dit/``, ``shape-classifier/``)
live beside these modules and are installed with the package."""
