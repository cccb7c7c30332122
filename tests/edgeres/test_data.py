"""Tests of edgeres.data: real image files written with Pillow, checked against independent numpy computations."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeres import data
from edgeres.card import Preprocess
from edgeres.data import (
    IMAGE_SUFFIXES,
    decode_image,
    list_images,
    load_batch,
    load_image,
    open_dataset,
    preprocess_image,
    scan_image_folder,
)
from edgeres.errors import DataError, EdgeresError, InputError

RNG = np.random.default_rng(1234)


def _noise(h: int, w: int, c: int = 3) -> np.ndarray:
    shape = (h, w) if c == 1 else (h, w, c)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _gradient(h: int, w: int) -> np.ndarray:
    """A smooth RGB image that lossy codecs keep nearly intact."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // (w + h - 2)],
                    axis=-1).astype(np.uint8)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, the L that Pillow computes from RGB."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return r * 0.299 + g * 0.587 + b * 0.114


def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _png(path: Path, value: int = 128, size: tuple[int, int] = (6, 5)) -> Path:
    return _save(path, Image.new("L", size, value))


# --- formats and modes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix, kw", [
    (".png", {}), (".bmp", {}), (".tif", {}), (".tiff", {"compression": "tiff_lzw"}), (".webp", {"lossless": True}),
])
def test_lossless_formats_decode_exactly(tmp_path, suffix, kw):
    arr = _noise(7, 9)
    path = _save(tmp_path / f"img{suffix}", Image.fromarray(arr), **kw)
    img = decode_image(path, channels=3)
    assert img.mode == "RGB" and img.size == (9, 7)
    np.testing.assert_array_equal(np.asarray(img), arr)


def test_gif_with_few_colours_decodes_exactly(tmp_path):
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 10]], dtype=np.uint8)
    arr = colours[RNG.integers(0, 4, (6, 8))]
    path = _save(tmp_path / "img.gif", Image.fromarray(arr))
    np.testing.assert_array_equal(np.asarray(decode_image(path, channels=3)), arr)


@pytest.mark.parametrize("suffix, kw", [(".jpg", {"quality": 95}), (".jpeg", {"quality": 95}),
                                        (".webp", {"quality": 95})])
def test_lossy_formats_decode_closely(tmp_path, suffix, kw):
    arr = _gradient(32, 48)
    path = _save(tmp_path / f"img{suffix}", Image.fromarray(arr), **kw)
    img = decode_image(path, channels=3)
    assert img.mode == "RGB" and img.size == (48, 32)
    assert np.abs(np.asarray(img).astype(int) - arr).mean() < 3


def test_upper_case_suffix_decodes(tmp_path):
    arr = _noise(4, 5)
    path = _save(tmp_path / "IMG.PNG", Image.fromarray(arr), format="PNG")
    np.testing.assert_array_equal(np.asarray(decode_image(path, channels=3)), arr)
    assert data.is_image_file(tmp_path / "X.JpEg") and not data.is_image_file(tmp_path / "x.txt")
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)


def _mode_cases() -> list[tuple[str, Image.Image, str, np.ndarray]]:
    """(id, image to save, suffix, the RGB an independent reading gives)."""
    rgb, grey = _noise(5, 6), _noise(5, 6, 1)
    alpha = _noise(5, 6, 1)
    palette = _noise(16, 3, 1).reshape(16, 3)
    idx = RNG.integers(0, 16, (5, 6)).astype(np.uint8)
    p_img = Image.fromarray(idx, mode="P")
    p_img.putpalette(palette.flatten().tolist() + [0] * (768 - 48))
    p_trans = p_img.copy()
    p_trans.info["transparency"] = 3
    cmyk = _noise(5, 6, 4)
    cmyk_rgb = np.rint((255 - cmyk[..., :3].astype(float)) * (255 - cmyk[..., 3:].astype(float)) / 255)
    wide = RNG.integers(0, 65536, (5, 6)).astype(np.uint16)
    wide[0, :2] = (0, 65535)
    wide_8 = np.rint(wide / 257.0)
    bits = RNG.integers(0, 2, (5, 6)).astype(bool)
    floats = RNG.random((5, 6)).astype(np.float32)
    ints = RNG.integers(0, 65536, (5, 6)).astype(np.int32)
    g3 = lambda a: np.repeat(np.asarray(a, dtype=np.float64)[..., None], 3, axis=-1)  # noqa: E731
    return [
        ("L", Image.fromarray(grey, mode="L"), ".png", g3(grey)),
        ("LA", Image.fromarray(np.dstack([grey, alpha]), mode="LA"), ".png", g3(grey)),
        ("P", p_img, ".png", palette[idx].astype(float)),
        ("P-transparent", p_trans, ".png", palette[idx].astype(float)),
        ("P-gif", p_img, ".gif", palette[idx].astype(float)),
        ("RGBA", Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"), ".png", rgb.astype(float)),
        ("CMYK", Image.fromarray(cmyk, mode="CMYK"), ".tif", cmyk_rgb),
        ("I;16", Image.fromarray(wide), ".png", g3(wide_8)),
        ("I;16-tiff", Image.fromarray(wide), ".tiff", g3(wide_8)),
        ("I", Image.fromarray(ints, mode="I"), ".tif", g3(np.rint(ints / 257.0))),
        ("F", Image.fromarray(floats, mode="F"), ".tif", g3(np.rint(floats * 255.0))),
        ("1", Image.fromarray(bits.astype(np.uint8) * 255).convert("1", dither=Image.Dither.NONE), ".png",
         g3(bits * 255.0)),
    ]


@pytest.mark.parametrize("case", _mode_cases(), ids=lambda c: c[0])
def test_every_mode_converts_to_rgb_and_grey(tmp_path, case):
    name, img, suffix, expected_rgb = case
    path = _save(tmp_path / f"img{suffix}", img)
    if name in ("I;16", "I;16-tiff", "CMYK", "LA", "RGBA", "F", "I", "1"):  # the file really holds that mode
        with Image.open(path) as check:
            assert check.mode.split(";")[0] == name.split("-")[0].split(";")[0]
    rgb = decode_image(path, channels=3)
    assert rgb.mode == "RGB" and rgb.size == (6, 5)
    np.testing.assert_allclose(np.asarray(rgb), expected_rgb, atol=0)
    grey = decode_image(path, channels=1)
    assert grey.mode == "L" and grey.size == (6, 5)
    np.testing.assert_allclose(np.asarray(grey), _luma(expected_rgb), atol=1.0)


def test_cmyk_jpeg_decodes(tmp_path):
    path = _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (16, 8), (0, 255, 255, 0)), quality=95)  # pure red
    arr = np.asarray(decode_image(path, channels=3)).astype(int)
    assert np.abs(arr - [255, 0, 0]).max() < 8


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((32, 64, 3), dtype=np.uint8)  # h=32, w=64
    arr[:8, :, 0] = 255  # red top band
    arr[:, :16, 2] = 255  # blue left band
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(tmp_path / "rot.jpg", img, exif=exif, quality=98)
    out = np.asarray(decode_image(path, channels=3)).astype(int)
    assert out.shape == (64, 32, 3)
    expected = np.rot90(arr, k=-1).astype(int)  # clockwise
    assert np.abs(out - expected).mean() < 4
    assert out[:, -8:, 0].mean() > 200 and out[:, :8, 0].mean() < 50  # the top band is now on the right
    assert out[:16, :, 2].mean() > 200 and out[-16:, :, 2].mean() < 50  # the left band is now on top


def test_first_frame_of_animated_gif(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(np.asarray(decode_image(path, channels=3))[0, 0], [255, 0, 0])


# --- bad files --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_names_file_and_reason(tmp_path, suffix):
    path = _save(tmp_path / f"cut{suffix}", Image.fromarray(_noise(64, 64)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as info:
        decode_image(path, channels=3)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert "truncated" in msg or "corrupt" in msg


@pytest.mark.parametrize("content, reason", [(b"", "empty"), (b"hello, not an image\n", "not an image")])
def test_empty_or_non_image_file(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match=reason) as info:
        decode_image(path, channels=3)
    assert str(path) in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_image(tmp_path / "nope.png", Preprocess.small())
    with pytest.raises(DataError, match="folder"):
        decode_image(tmp_path, channels=1)


@pytest.mark.parametrize("size", [(12, 12), (16, 16)], ids=["warning-range", "error-range"])
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, size):
    path = _png(tmp_path / "bomb.png", size=size)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 px: Pillow only warns; 256 px: Pillow errors
    with pytest.raises(DataError, match="decompression bomb") as info:
        decode_image(path, channels=1)
    assert str(info.value).startswith(f"{path}: ")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_image(path, channels=1).size == size


def test_bad_channels_rejected(tmp_path):
    with pytest.raises(InputError):
        decode_image(_png(tmp_path / "a.png"), channels=2)


# --- preprocessing ----------------------------------------------------------------------------------------------

def test_preprocess_crop_normalise_bgr_nhwc_against_numpy():
    arr = _noise(40, 51)  # crop offsets: top (40-32)/2 = 4, left round(19/2) = round(9.5) = 10
    mean, std = (0.1, 0.4, 0.7), (0.2, 0.3, 0.5)
    pre = Preprocess(resize=None, crop=32, mean=mean, std=std, channel_order="BGR", layout="NHWC")
    x = preprocess_image(Image.fromarray(arr), pre)
    assert x.dtype == np.float32 and x.shape == (32, 32, 3) == pre.input_shape
    crop = arr[4:36, 10:42].astype(np.float64) / 255.0
    expected = ((crop - np.array(mean)) / np.array(std))[:, :, ::-1]
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)
    assert x.flags["C_CONTIGUOUS"]


def test_preprocess_resize_short_side_then_crop_nchw():
    arr = _noise(40, 60)
    pre = Preprocess(resize=20, crop=20, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = preprocess_image(Image.fromarray(arr), pre)
    assert x.shape == (3, 20, 20)
    resized = np.asarray(Image.fromarray(arr).resize((30, 20), Image.Resampling.BILINEAR)).astype(np.float64)
    expected = ((resized[:, 5:25] / 255.0 - 0.5) / 0.25).transpose(2, 0, 1)
    np.testing.assert_allclose(x, expected, atol=1e-5)


def test_preprocess_portrait_and_interpolation_and_grey():
    arr = _noise(90, 30)
    pre = Preprocess(resize=10, crop=8, mean=(0.0,), std=(1.0,), channels=1, interpolation="nearest")
    x = preprocess_image(Image.fromarray(arr), pre)  # RGB in, converted to L
    assert x.shape == (1, 8, 8)
    resized = np.asarray(Image.fromarray(arr).convert("L").resize((10, 30), Image.Resampling.NEAREST))
    np.testing.assert_allclose(x[0], resized[11:19, 1:9] / 255.0, atol=1e-6)
    with pytest.raises(EdgeresError, match="interpolation"):
        preprocess_image(Image.fromarray(arr), Preprocess(resize=10, crop=8, interpolation="fancy"))


def test_preprocess_pads_images_smaller_than_the_crop():
    arr = _noise(6, 10, 1)
    pre = Preprocess(resize=None, crop=8, mean=(0.5,), std=(0.5,), channels=1)
    x = preprocess_image(Image.fromarray(arr, mode="L"), pre)[0]
    expected = np.full((8, 8), -1.0)  # (0 - 0.5) / 0.5
    expected[1:7, :] = (arr[:, 1:9] / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(x, expected, atol=1e-6)


def test_jpeg_draft_is_used_and_matches_full_decode(tmp_path):
    path = _save(tmp_path / "big.jpg", Image.fromarray(_gradient(768, 1024)), quality=95)
    pre = Preprocess(resize=128, crop=112)
    drafted = decode_image(path, channels=3, min_short_side=128)
    assert drafted.size == (256, 192)  # scale 1/4: the short side still covers 128
    assert decode_image(path, channels=3, min_short_side=400).size == (1024, 768)  # < 2x: no draft
    fast = load_image(path, pre)
    full = preprocess_image(decode_image(path, channels=3), pre)
    assert fast.shape == full.shape == (3, 112, 112)
    diff = np.abs(fast - full)
    assert diff.mean() < 0.02 and diff.max() < 0.15  # normalised units; one 8-bit level is ~0.017


def test_load_batch_and_iter_batches(tmp_path):
    paths = [_png(tmp_path / f"{i}.png", value=i * 40) for i in range(5)]
    pre = Preprocess.small(size=4, channels=1, mean=(0.0,), std=(1.0,))
    batch = load_batch(paths, pre)
    assert batch.shape == (5, 1, 4, 4) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[:, 0, 0, 0], [i * 40 / 255.0 for i in range(5)], atol=1e-6)
    chunks = list(data.iter_batches(paths, pre, batch_size=2))
    assert [len(c) for c in chunks] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(chunks), batch)
    assert load_batch([], pre).shape == (0, 1, 4, 4)
    with pytest.raises(DataError, match="missing.png"):
        load_batch([*paths, tmp_path / "missing.png"], pre)


# --- folders ----------------------------------------------------------------------------------------------------

def _tree(root: Path, spec: dict[str, int], suffix: str = ".png") -> Path:
    for cls, n in spec.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / cls / f"{i:03d}{suffix}", value=i)
    return root


def test_scan_image_folder_sorted_with_upper_case_and_junk(tmp_path, caplog):
    root = _tree(tmp_path / "ds", {"cat": 2, "Bird": 1})
    _png(root / "cat" / "Z.JPG")  # upper-case suffix (PNG bytes are fine: Pillow sniffs the content)
    (root / "cat" / "notes.txt").write_text("x")
    (root / "cat" / ".hidden.png").write_bytes(b"")
    (root / ".git").mkdir()
    _png(root / "cat" / "nested" / "deep.png")
    with caplog.at_level(logging.WARNING, logger="edgeres.data"):
        folder = scan_image_folder(root)
    assert folder.classes == ["Bird", "cat"]
    assert [(p.relative_to(root).as_posix(), c) for p, c in folder.samples] == [
        ("Bird/000.png", 0), ("cat/000.png", 1), ("cat/001.png", 1), ("cat/Z.JPG", 1)]
    assert "nested" in caplog.text and "ignoring" in caplog.text
    assert len(folder) == 4 and folder.labels == [0, 1, 1, 1]


def test_empty_class_folder_is_an_error(tmp_path):
    root = _tree(tmp_path / "ds", {"a": 1})
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="has no images") as info:
        scan_image_folder(root)
    assert str(root / "b") in str(info.value)


def test_no_class_folders_is_an_error(tmp_path):
    root = tmp_path / "flat"
    _png(root / "x.png")
    with pytest.raises(DataError, match=r"no class folders \(it holds 1 images directly") as info:
        scan_image_folder(root)
    assert "<class>" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders;"):
        scan_image_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="folder not found"):
        scan_image_folder(tmp_path / "missing")
    with pytest.raises(DataError, match="is a file"):
        scan_image_folder(root / "x.png")


def test_list_images_recursive_sorted_hidden_skipped(tmp_path):
    root = tmp_path / "imgs"
    for rel in ["b.png", "A.JPG", "sub/c.jpeg", "sub/deeper/d.TIFF", ".hid/e.png", "sub/.f.png", "g.txt", "a/z.png"]:
        _png(root / rel) if not rel.endswith(".txt") else (root / rel).write_text("x")
    got = [p.relative_to(root).as_posix() for p in list_images(root)]
    assert got == ["A.JPG", "a/z.png", "b.png", "sub/c.jpeg", "sub/deeper/d.TIFF"]
    assert [p.name for p in list_images(root, recursive=False)] == ["A.JPG", "b.png"]
    assert list_images(root / "b.png") == [root / "b.png"]
    with pytest.raises(DataError, match="folder not found"):
        list_images(tmp_path / "nope")


# --- datasets ---------------------------------------------------------------------------------------------------

def test_open_dataset_train_val_with_calibration(tmp_path):
    root = tmp_path / "ds"
    _tree(root / "train", {"a": 3, "b": 2})
    _tree(root / "val", {"a": 1, "b": 1})
    (root / "calibration.txt").write_text("# a comment\ntrain/a/000.png\n\ntrain/b/001.png\n")
    ds = open_dataset(root)
    assert ds.classes == ["a", "b"] and len(ds.train) == 5 and len(ds.val) == 2
    assert ds.calibration == [root / "train/a/000.png", root / "train/b/001.png"]
    assert ds.summary()["calibration"] == 2
    (root / "calibration.txt").write_text("train/a/000.png\ntrain/a/999.png\n")
    with pytest.raises(DataError, match=r"calibration.txt:2: train/a/999.png not found"):
        open_dataset(root)
    (root / "calibration.txt").unlink()
    assert open_dataset(root).calibration is None


def test_open_dataset_class_mismatch(tmp_path):
    root = tmp_path / "ds"
    _tree(root / "train", {"a": 1, "b": 1})
    _tree(root / "val", {"a": 1, "c": 1})
    with pytest.raises(DataError, match="only in train: b; only in val: c"):
        open_dataset(root)


def test_open_dataset_flat_needs_val_split(tmp_path):
    root = _tree(tmp_path / "ds", {"a": 2})
    with pytest.raises(DataError, match="--val-split"):
        open_dataset(root)
    _tree(root / "train", {"a": 2})
    with pytest.raises(DataError, match="train/ but no val/.*--val-split"):
        open_dataset(root)
    with pytest.raises(InputError, match="between 0 and 1"):
        open_dataset(root, val_split=1.5)


def test_open_dataset_val_split_is_stratified_and_seeded(tmp_path):
    root = _tree(tmp_path / "ds", {"a": 50, "b": 10, "c": 3})
    ds = open_dataset(root, val_split=0.2, seed=3)
    assert ds.classes == ["a", "b", "c"]
    val_counts = np.bincount(ds.val.labels, minlength=3).tolist()
    assert val_counts == [10, 2, 1]
    assert sorted(map(str, ds.train.paths + ds.val.paths)) == sorted(str(p) for p, _ in scan_image_folder(root).samples)
    assert not set(ds.train.paths) & set(ds.val.paths)
    assert ds.val.samples == sorted(ds.val.samples, key=lambda s: (s[1], s[0].name))
    again = open_dataset(root, val_split=0.2, seed=3)
    assert again.val.samples == ds.val.samples and again.train.samples == ds.train.samples
    other = open_dataset(root, val_split=0.2, seed=4)
    assert other.val.samples != ds.val.samples
    assert np.bincount(other.val.labels, minlength=3).tolist() == [10, 2, 1]


def test_open_dataset_train_only_with_val_split_and_val_split_ignored_with_val(tmp_path, caplog):
    root = tmp_path / "ds"
    _tree(root / "train", {"a": 5, "b": 5})
    ds = open_dataset(root, val_split=0.4)
    assert np.bincount(ds.val.labels).tolist() == [2, 2] and len(ds.train) == 6
    assert all(p.parent.parent == root / "train" for p in ds.train.paths + ds.val.paths)
    _tree(root / "val", {"a": 1, "b": 1})
    with caplog.at_level(logging.WARNING, logger="edgeres.data"):
        ds = open_dataset(root, val_split=0.4)
    assert len(ds.train) == 10 and len(ds.val) == 2 and "ignoring val_split" in caplog.text
