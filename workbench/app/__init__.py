"""What the Streamlit pages call: cached models and readable errors (``state``), shared widgets (``widgets``), the
app's runs of a pipeline (``runs``), policy editing and the library (``policy``) and Auto-FR (``autofr``). No maths
here that the CLI lacks: these modules put workbench services together for the pages."""
