import sys

from revit.cli.main import main

sys.exit(main())
