from revit.config import Granularity, Setting
from revit.cost import build_cost
from revit.latency.table import LatencyTable, resolve_table
from revit.rules import Budget, generate, load_rule

setting = Setting.parse("micro")                     # 28x28x1, patch 7, 8 blocks, 10 classes
gran = Granularity.parse("auto", setting.img_size)   # micro: EMB 8 HEADS 1 QK 4 V 4 MLP 8
table = LatencyTable.load(resolve_table("cpu_onnxruntime_fp32_bs64_t17"))
lat = build_cost("latency", table)
g = generate(load_rule("less-more-less"), Budget(lat, 8.0e-3), setting, granularity=gran)
print(gran.describe())
print(g.summary())
print("minimum widths the table can evaluate:", lat.minimum_widths())
print("saving of 8 MLP units in block 0:", lat.format(lat.saving(g.config, "mlp_dim", 0, 8)))
