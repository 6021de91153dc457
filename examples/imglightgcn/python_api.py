"""The Python API on the example model (docs/extending.md): train it and LightGCN, compare them, recommend.

Run by examples/imglightgcn/run.sh as ``python examples/imglightgcn/python_api.py DATA OUT``.
"""

import sys
from pathlib import Path

import modalrec as mr

data_dir, out = sys.argv[1], Path(sys.argv[2])
model = f"{Path(__file__).with_name('imglightgcn.py')}:ImgLightGCN"  # a spec; the class itself works too

data = mr.load_dataset(data_dir)
settings = {"epochs": 20, "learning_rate": 0.01, "proj_scale": 0.5}  # its own key beside the shared ones
mine = mr.train(model, data, settings=settings, seed=1, out=out / "mine")
base = mr.train("LightGCN", data, settings={"epochs": 20, "learning_rate": 0.01}, seed=1, out=out / "base")
print(mr.compare(mine, base, "recall@20"))  # paired t-test over the users both runs evaluated
print(mr.evaluate(mine, "test", ks=10).metrics)
print(mr.recommend(mine, user=0, k=5)["items"][0])
