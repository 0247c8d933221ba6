"""An example revit plug-in package: each module adds one member to a revit registry through an entry point.

Nothing is imported here, so listing revit's registries imports only the member that is used.
"""
