"""The versions of the unit files and unit maps, a param of each rule that writes them.

Plain strings (no torch): the workflow reads them when it parses.
"""

UNITS_FORMAT = "residual-units/1"  # units/store.py: bump when the file layout or the decomposition (units/decompose.py) changes
UNIT_MAP_VERSION = "unit-map/2"  # units/unit_map.py: bump when a change to this module changes the maps it writes
