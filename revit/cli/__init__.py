"""The ``revit`` command line: thin commands that parse, build a typed config, call the library."""
