"""Packaging glue: ship the top-level data folders inside the wheel as ``revit/_shipped/<kind>``.

Everything else is in pyproject.toml; ``revit.paths.shipped_dir`` finds the folders either way.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
SHIPPED = {k: v for k, v in {"rules": ["*.yaml"], "search": ["*.yaml"], "latency_tables": ["*.json"]}.items()
           if (HERE / k).is_dir()}

setup(
    packages=find_packages(include=["revit", "revit.*"]) + [f"revit._shipped.{k}" for k in SHIPPED],
    package_dir={f"revit._shipped.{k}": k for k in SHIPPED},
    package_data={"revit": ["py.typed"], **{f"revit._shipped.{k}": v for k, v in SHIPPED.items()}},
)
