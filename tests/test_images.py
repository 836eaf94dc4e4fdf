import cv2
import numpy as np
import pytest

from edge_ad.errors import ImageError
from edge_ad.images import as_grey, check_frame, is_grey, read_image, resize_to_input, to_rgb


def test_grey_png_becomes_three_equal_channels(tmp_path):
    grey = np.tile(np.arange(64, dtype=np.uint8), (32, 1))
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    rgb = read_image(tmp_path / "g.png")
    assert rgb.shape == (32, 64, 3)
    assert (rgb[..., 0] == grey).all() and (rgb[..., 2] == grey).all()


def test_grey_pictures_are_told_from_colour_ones(tmp_path):
    """A grey picture is grey also through a colour JPEG (its channels then differ by rounding);
    a colour one, even one of a grey part under a light a little warm, is not. A grey picture's
    grey picture is itself."""
    grey = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8), (5, 5), 2)
    cv2.imwrite(str(tmp_path / "grey.jpg"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    assert is_grey(read_image(tmp_path / "grey.jpg")) and is_grey(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB))
    warm = np.clip(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB) * np.array([1.05, 1.0, 0.95]), 0, 255).astype(np.uint8)
    assert not is_grey(warm)
    assert is_grey(as_grey(warm)) and np.array_equal(as_grey(as_grey(warm)), as_grey(warm))
    rgba = np.dstack([cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), np.full_like(grey, 255)])  # a PNG's alpha is no colour
    for step, blue, grey_still in ((1, 2, True), (1, 3, False), (4, 3, False)):  # in a frame's every fourth pixel too
        tinted = rgba.copy()
        tinted[8, 8, 2] = min(255, int(tinted[8, 8, 0]) + blue)  # the third channel alone, by 2 or 3 levels
        assert is_grey(tinted[::step, ::step]) == grey_still


def test_colour_file_is_returned_as_rgb(tmp_path):
    bgr = np.zeros((16, 16, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV order
    cv2.imwrite(str(tmp_path / "b.png"), bgr)
    rgb = read_image(tmp_path / "b.png")
    assert rgb[0, 0].tolist() == [0, 0, 200]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_pictures_are_read_at_their_full_range(tmp_path, suffix):
    values = np.tile(np.array([0, 257, 4095, 32768, 65535], np.uint16), (8, 2))  # 4095: a 12-bit camera's brightest
    cv2.imwrite(str(tmp_path / f"p{suffix}"), values)
    assert read_image(tmp_path / f"p{suffix}")[0, :5, 0].tolist() == [0, 1, 16, 128, 255]
    cv2.imwrite(str(tmp_path / "f.tif"), values.astype(np.float32))
    with pytest.raises(ImageError, match=r"f.tif: float32 pixels are not read; save pictures with 8 or 16 bits"):
        read_image(tmp_path / "f.tif")


def test_webp_pictures_in_a_folder_are_read(tmp_path):
    """Pictures saved from a browser or exported by a labelling tool are often WebP; a folder that
    mixes them with PNGs is read whole, not only its PNGs."""
    from edge_ad.sources import PictureSource

    bgr = np.random.default_rng(1).integers(0, 256, (24, 32, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), bgr)
    cv2.imwrite(str(tmp_path / "b.webp"), bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])  # above 100: lossless
    assert np.array_equal(read_image(tmp_path / "b.webp"), bgr[..., ::-1])
    frames = list(PictureSource(tmp_path))
    assert [f.name for f in frames] == ["a.png", "b.webp"]
    assert np.array_equal(frames[1].image, bgr)


def test_pgm_and_ppm_pictures_are_read_at_the_maximum_they_state(tmp_path):
    """Machine-vision tools save PGM (grey) and PPM (colour); a 12-bit camera's PGM states 4095 as
    its maximum, which OpenCV does not scale by: 4095 is white, not 16 of 255 as value / 257 gives.
    Each is read from a folder with the others, and an overlay of a PGM is written as a PNG (a
    PGM holds no colour)."""
    from edge_ad.picture_output import PictureOutput
    from edge_ad.sources import PictureSource

    twelve_bits = np.tile(np.array([0, 1024, 2048, 4095], ">u2"), (8, 2))
    (tmp_path / "a.pgm").write_bytes(b"P5\n# saved by a camera tool\n8 8\n4095\n" + twelve_bits.tobytes())
    assert read_image(tmp_path / "a.pgm")[0, :4, 0].tolist() == [0, 64, 128, 255]
    (tmp_path / "b.pgm").write_bytes(b"P2 8 8 15 " + b" 0 5 10 15" * 16)  # plain text, at 4 bits
    assert read_image(tmp_path / "b.pgm")[0, :4, 1].tolist() == [0, 85, 170, 255]
    bgr = np.random.default_rng(2).integers(0, 256, (8, 12, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "c.ppm"), bgr)
    assert np.array_equal(read_image(tmp_path / "c.ppm"), bgr[..., ::-1])
    assert [frame.name for frame in PictureSource(tmp_path)] == ["a.pgm", "b.pgm", "c.ppm"]
    (tmp_path / "cut.pgm").write_bytes((tmp_path / "a.pgm").read_bytes()[:-3])
    with pytest.raises(ImageError, match=r"cut.pgm: truncated PGM \(62 of its 64 values\)"):
        read_image(tmp_path / "cut.pgm")
    output = PictureOutput(f"{tmp_path / 'overlays'}/", [], live=False)
    assert [output.path_for(0, "a.pgm").name, output.path_for(1, "c.ppm").name] == ["a.png", "c.ppm"]


def test_a_picture_whose_header_states_a_size_past_opencvs_limits_is_an_unreadable_one(tmp_path):
    """OpenCV asserts (cv2.error), rather than gives none, for a damaged BMP header that states a
    height of 2^30: `train` stopped with a traceback instead of naming the file (--skip-bad)."""
    import struct

    damaged = bytearray(cv2.imencode(".bmp", np.zeros((40, 50, 3), np.uint8))[1].tobytes())
    damaged[22:26] = struct.pack("<i", 2**30)  # BITMAPINFOHEADER's height
    (tmp_path / "cell.bmp").write_bytes(damaged)
    with pytest.raises(ImageError, match=r"cell.bmp: not a decodable image \(its header states a size past OpenCV's "
                                         r"limits\)"):
        read_image(tmp_path / "cell.bmp")


def test_a_followed_folders_overlay_names_are_forgotten_once_their_pictures_are_gone(tmp_path, monkeypatch):
    """`--follow` with a folder output names an overlay per part for months; the names are kept to
    tell a camera's repeated name from a new one, and those whose overlays the plant has deleted
    are forgotten, so the memory they take stays bounded. A name still on disk keeps its mark."""
    from edge_ad import picture_output

    monkeypatch.setattr(picture_output, "FORGET_AT", 8)
    output = picture_output.PictureOutput(f"{tmp_path / 'overlays'}/", [], live=False)
    for index in range(40):
        path = output.path_for(index, f"part{index:03d}.png")
        path.touch()  # as the writing thread writes it
        if index < 20:
            path.unlink()  # the plant deletes the older ones
    assert len(output._named) < 30  # forgotten as they went, not one per part
    assert output.path_for(41, "part005.png").name == "part005.png"  # deleted: nothing to write over
    assert output.path_for(42, "part020.png").name == "part020_42.png"  # still there
    assert output.path_for(43, "part039.png").name == "part039_43.png"


def test_pictures_taken_turned_are_read_as_a_viewer_shows_them(tmp_path):
    """A phone or a camera held upright stores a landscape JPEG and an EXIF orientation (6: turn a
    quarter clockwise); read without it, such pictures train and score lying on their side."""
    from PIL import Image

    landscape = np.zeros((40, 80, 3), np.uint8)
    landscape[:10, :20] = 255  # a bright top-left corner
    picture = Image.fromarray(landscape)
    exif = picture.getexif()
    exif[0x0112] = 6
    picture.save(tmp_path / "upright.jpg", exif=exif.tobytes(), quality=95)
    rgb = read_image(tmp_path / "upright.jpg")
    assert rgb.shape == (80, 40, 3)
    assert rgb[:20, -10:].mean() > 200 and rgb[-20:, :10].mean() < 50  # the corner is now top right


def test_frames_resized_before_their_colours_change_give_the_same_input():
    """The detector resizes a frame before it converts its colour order (cheaper for large
    frames): the same pixels as converting the whole frame first, for every frame layout."""
    rng = np.random.default_rng(0)
    frames = [(rng.integers(0, 256, (301, 403, channels), np.uint8), color)
              for channels, color in ((3, "BGR"), (3, "RGB"), (4, "BGR"), (1, "GRAY"))]
    frames.append((rng.integers(0, 256, (90, 70), np.uint8), "GRAY"))  # grey and smaller than the input: enlarged
    for frame, color in frames:
        for size in ((128, 128), (96, 160)):
            assert np.array_equal(to_rgb(frame, color, size=size), resize_to_input(to_rgb(frame, color), *size))
    with pytest.raises(ImageError, match=r"shape \(301, 403, 3\) has colour channels but color='GRAY'"):
        to_rgb(frames[0][0], "GRAY", size=(128, 128))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_files_are_named(tmp_path, suffix):
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / f"cut{suffix}"
    cv2.imwrite(str(path), image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=f"cut{suffix}.*truncated"):
        read_image(path)


def test_format_is_read_from_the_bytes_not_the_name(tmp_path):
    """A JPEG saved as .png (and the other way round) is read; cut short, it is named by its real format."""
    columns, rows = np.meshgrid(np.arange(64), np.arange(48))
    image = np.stack([columns * 3, rows * 4, np.full_like(rows, 90)], axis=2).astype(np.uint8)
    jpeg, png = cv2.imencode(".jpg", image)[1].tobytes(), cv2.imencode(".png", image)[1].tobytes()
    (tmp_path / "jpeg.png").write_bytes(jpeg)
    (tmp_path / "png.jpg").write_bytes(png)
    assert (read_image(tmp_path / "png.jpg") == image[..., ::-1]).all()
    assert np.abs(read_image(tmp_path / "jpeg.png").astype(int) - image[..., ::-1]).max() <= 8
    (tmp_path / "cut.png").write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageError, match="cut.png: truncated JPEG"):
        read_image(tmp_path / "cut.png")


def test_not_an_image_and_empty_and_missing(tmp_path):
    (tmp_path / "text.png").write_bytes(b"hello, not a picture" * 100)
    with pytest.raises(ImageError, match="text.png: not a decodable image"):
        read_image(tmp_path / "text.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg: empty file"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="missing.png: cannot read"):
        read_image(tmp_path / "missing.png")
    cv2.imwrite(str(tmp_path / "dot.png"), np.full((1, 1), 255, np.uint8))  # a mask of one pixel: was "frame: shape"
    with pytest.raises(ImageError, match=r"dot.png: shape \(1, 1\) is too small \(at least 8x8 pixels\)"):
        read_image(tmp_path / "dot.png")


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((32, 32, 3), np.float32), r"dtype float32, expected uint8 .* from 0 to 0, .* \(frame \* 255\)"),
        (np.full((32, 32, 3), 0.5, np.float64), r"from 0.5 to 0.5, as in a picture of 0 to 1: \(frame \* 255\)"),
        (np.full((32, 32, 3), 200, np.float32), r"from 200 to 200: frame.round\(\).astype\(np.uint8\)"),  # not * 255
        (np.full((32, 32), np.nan, np.float32), "NaN or infinite"),
        (np.full((32, 32), 4095, np.uint16), r"dtype uint16, expected uint8 .* \(frame >> \(bits - 8\)\)"),
        (np.full((32, 32), 200, np.uint16), r"from 200 to 200: frame.astype\(np.uint8\)"),  # already 8-bit values
        (np.full((32, 32), -3, np.int32), "from -3 to -3, beyond 0 to 255"),
        (np.zeros((32, 32, 2), np.uint8), "shape"),
        (np.zeros((0, 32, 3), np.uint8), "too small"),
        ([[0, 1]], "numpy array"),
    ],
)
def test_bad_frames_are_explained(frame, message):
    with pytest.raises(ImageError, match=message):
        check_frame(frame)


def test_channel_orders():
    bgr = np.zeros((10, 12, 3), np.uint8)
    bgr[..., 0] = 255
    assert to_rgb(bgr, "BGR")[0, 0].tolist() == [0, 0, 255]
    assert to_rgb(bgr, "RGB")[0, 0].tolist() == [255, 0, 0]
    assert to_rgb(np.full((10, 12), 7, np.uint8), "GRAY").shape == (10, 12, 3)
    with pytest.raises(ImageError, match="color"):
        to_rgb(bgr, "HSV")


def test_resize_to_input_any_size():
    assert resize_to_input(np.zeros((300, 500, 3), np.uint8), 128, 128).shape == (128, 128, 3)
    assert resize_to_input(np.zeros((40, 50, 3), np.uint8), 128, 96).shape == (128, 96, 3)
