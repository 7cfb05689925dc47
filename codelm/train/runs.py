"""One finished training run per folder: `train_once` trains a recipe, or reuses the run already
finished in its folder when the settings that matter are the same (the lab's and the demo's stages
are re-run as often as a user repeats the command)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from codelm.errors import ConfigError
from codelm.train.loop import train
from codelm.train.recipe import Recipe


def essentials(recipe: dict) -> str:
    """What a finished run's reuse depends on: the model, its start, the length, the schedule and the seed.
    Paths count relative to the run's folder, so a folder that was moved or copied is still reused."""
    m, d, t = recipe["model"], recipe["data"], recipe["train"]
    here = recipe["run"]["out_dir"]

    def where(path):
        return None if path is None else os.path.relpath(path, here)

    return json.dumps([m.get("preset"), where(m.get("init_from")), m.get("config"), d.get("seq_len"),
                       [(where(x.get("path")), x.get("weight"), x.get("loss_weight", 1.0),
                         x.get("prompt_loss_weight", 0.0))
                        for x in d.get("sources", [])],
                       [t.get(k) for k in ("max_steps", "batch_tokens", "lr", "warmup_steps")],
                       recipe["run"].get("seed")], sort_keys=True)


def train_once(recipe: Recipe, show_progress: bool = True) -> Path:
    """The final checkpoint of the recipe's run: reused when finished with the same essentials, resumed
    when it stopped halfway, trained otherwise. A folder trained with other settings is refused."""
    final = recipe.out_dir / "final"
    made_by = recipe.out_dir / "recipe.json"
    if made_by.is_file() and essentials(json.loads(made_by.read_text())) != essentials(recipe.to_dict()):
        raise ConfigError(f"{recipe.out_dir} was trained with other settings; use another --out for these, or "
                          f"delete that folder to train it again (a copy of the lab folder keeps the other runs)")
    if (final / "config.json").is_file() and (recipe.out_dir / "summary.json").is_file():
        return final
    result = train(recipe, resume=True, show_progress=show_progress)
    if result.final_dir is None:
        raise ConfigError(f"{recipe.out_dir}: training stopped before its last step (train.stop_at_step?)")
    return result.final_dir
