"""The synthetic scene world: procedural scenes, rendering, captions and dialogs."""

from world.render import STYLES, render
from world.scene import SPLITS, Scene, SceneObject, sample_scene, split_seed

__all__ = ["SPLITS", "STYLES", "Scene", "SceneObject", "render", "sample_scene", "split_seed"]
