"""Build what a profile names: its encoder, and its gallery + index when missing."""

from __future__ import annotations

from itir.profile import Profile
from retrieval.encoders import CLIPEncoder, Encoder, WorldEncoder
from retrieval.index import VectorIndex
from retrieval.ingest import Progress, index_folder
from retrieval.text_tower import TextTower


def load_encoder(profile: Profile, text_tower: TextTower | None = None) -> Encoder:
    """The profile's encoder; a world encoder reads `text_tower` (loaded here if not given)."""
    spec = profile.encoder
    if spec.kind == "world":
        tower = text_tower or TextTower(device=profile.torch_device)
        return WorldEncoder(profile.resolve(spec.location), tower, device=profile.torch_device)
    if spec.kind == "clip":
        return CLIPEncoder(profile.resolve(spec.location), device=profile.torch_device)
    raise ValueError(f"unknown encoder kind {spec.kind!r}; expected world or clip")


def ensure_index(profile: Profile, encoder: Encoder,
                 progress: Progress | None = None) -> VectorIndex:
    """The profile's index; on first use render the world gallery and/or index the folder."""
    path, folder = profile.index_path, profile.gallery_folder
    if path.exists():
        return VectorIndex.load(path, encoder=encoder.identity)
    if profile.gallery.folder is None:
        from world.build import DONE, build_split

        if not (folder / DONE).exists():
            n = profile.gallery.world_scenes
            build_split(n, "test", folder,
                        progress=progress and (lambda i, t: progress(i, t, "rendering gallery")))
    elif not folder.is_dir():
        raise FileNotFoundError(
            f"gallery folder {folder} does not exist; create it with your images or set "
            f"[gallery] folder in the {profile.name!r} profile")
    index, report = index_folder(folder, encoder, path, progress=progress)
    if len(index) == 0:
        raise ValueError(f"no readable images under {folder} ({len(report.skipped)} skipped); "
                         "add .jpg/.png/.webp/.bmp files and run `itir index` again")
    return index
