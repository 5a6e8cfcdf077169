import base64
import os

import pytest
from PIL import Image

from fastvlm_engine.errors import (
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    MediaNotFound,
    MediaTooLarge,
    PathNotAllowed,
    UnsupportedMedia,
)
from fastvlm_engine.media import decode_base64, decode_image, read_media, sniff_image_format
from tests.helpers.images import encode, photo, png_header_only

MB = 1 << 20


@pytest.fixture()
def roots(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_bytes(b"inside")
    (root / "dir").mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"secret")
    return root, outside


def test_reads_inside_roots_absolute_and_relative(roots):
    root, _ = roots
    assert read_media(str(root / "a.txt"), [root], MB) == b"inside"
    assert read_media("a.txt", [root], MB) == b"inside"


def test_no_roots_refuses_with_configuration_hint(roots):
    root, _ = roots
    with pytest.raises(PathNotAllowed) as info:
        read_media(str(root / "a.txt"), [], MB)
    assert "FASTVLM_MEDIA_ROOTS" in info.value.message


@pytest.mark.parametrize("make", [
    lambda root, outside: str(outside),
    lambda root, outside: str(root / ".." / outside.name),
    lambda root, outside: "../secret.txt",
    lambda root, outside: str(outside.parent / "does-not-exist.txt"),
    lambda root, outside: "/etc/passwd",
    lambda root, outside: "a.txt\x00.jpg",
])
def test_escapes_are_refused_without_saying_whether_the_target_exists(roots, make):
    root, outside = roots
    with pytest.raises(PathNotAllowed) as info:
        read_media(make(root, outside), [root], MB)
    assert info.value.message == "That path is not inside the server's media roots."
    assert str(outside.parent) not in info.value.message


def test_symlink_pointing_outside_is_refused(roots):
    root, outside = roots
    (root / "link.jpg").symlink_to(outside)
    with pytest.raises(PathNotAllowed):
        read_media("link.jpg", [root], MB)


def test_symlink_inside_roots_is_followed(roots):
    root, _ = roots
    (root / "alias.txt").symlink_to(root / "a.txt")
    assert read_media("alias.txt", [root], MB) == b"inside"


def test_missing_directory_fifo_inside_roots_are_not_found(roots):
    root, _ = roots
    os.mkfifo(root / "pipe")
    for name in ("missing.jpg", "dir", "pipe"):
        with pytest.raises(MediaNotFound):
            read_media(name, [root], MB)


def test_size_limit_is_checked_before_reading(roots):
    root, _ = roots
    (root / "big.bin").write_bytes(b"x" * 1000)
    with pytest.raises(MediaTooLarge):
        read_media("big.bin", [root], 999)
    assert len(read_media("big.bin", [root], 1000)) == 1000


def test_decode_png_jpeg_and_report_size():
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"):
        decoded = decode_image(encode(photo("coffee"), fmt), max_bytes=20 * MB, max_pixels=10**8)
        assert (decoded.width, decoded.height) == (600, 400)
        assert decoded.image.mode == "RGB"
        assert sniff_image_format(encode(photo("coffee"), fmt)) == ("JPEG" if fmt == "JPEG" else fmt)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    decoded = decode_image(encode(img, "JPEG", exif=exif), max_bytes=MB, max_pixels=10**6)
    assert (decoded.width, decoded.height) == (20, 40)


def test_transparency_composited_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    decoded = decode_image(encode(img, "PNG"), max_bytes=MB, max_pixels=100)
    assert decoded.image.getpixel((0, 0)) == (255, 255, 255)


def test_not_an_image_is_415_and_corrupt_is_422():
    with pytest.raises(UnsupportedMedia):
        decode_image(b"just some text", max_bytes=MB, max_pixels=10**6)
    with pytest.raises(UnsupportedMedia):
        decode_image(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100, max_bytes=MB, max_pixels=10**6)
    jpeg = encode(photo("chelsea"), "JPEG")
    with pytest.raises(InvalidImage):
        decode_image(jpeg[: len(jpeg) // 2], max_bytes=MB, max_pixels=10**7)
    with pytest.raises(InvalidImage):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, max_bytes=MB, max_pixels=10**7)


def test_pixel_limit_and_decompression_bomb():
    with pytest.raises(ImageTooLarge):
        decode_image(png_header_only(50_000, 50_000), max_bytes=MB, max_pixels=40_000_000)
    with pytest.raises(ImageTooLarge):
        decode_image(encode(photo("coffee"), "PNG"), max_bytes=20 * MB, max_pixels=600 * 400 - 1)
    with pytest.raises(MediaTooLarge):
        decode_image(encode(photo("coffee"), "PNG"), max_bytes=1000, max_pixels=10**7)


def test_base64_variants():
    raw = encode(Image.new("RGB", (3, 3)), "PNG")
    plain = base64.b64encode(raw).decode()
    assert decode_base64(plain, field="f", max_bytes=MB) == raw
    assert decode_base64("data:image/png;base64," + plain, field="f", max_bytes=MB) == raw
    assert decode_base64(plain[:10] + "\n" + plain[10:], field="f", max_bytes=MB) == raw
    assert decode_base64(base64.urlsafe_b64encode(raw).decode().rstrip("="), field="f", max_bytes=MB) == raw


def test_base64_errors_name_the_field_and_check_size_before_decoding():
    with pytest.raises(InvalidRequest) as info:
        decode_base64("!!!not base64", field="image_base64", max_bytes=MB)
    assert info.value.details["field"] == "image_base64"
    with pytest.raises(MediaTooLarge):
        decode_base64("A" * 4000, field="image_base64", max_bytes=100)


def test_a_folder_swapped_for_a_symlink_while_requests_run_never_raises_a_raw_os_error(tmp_path):
    """A directory inside a media root flipping between a real folder and a symlink (deploy
    scripts do this) made realpath/readlink raise FileNotFoundError or OSError: a 500."""
    import os
    import threading

    from fastvlm_engine.errors import MediaError
    from fastvlm_engine.media import open_media

    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.jpg").write_bytes(b"\xff\xd8\xff" + b"x" * 100)
    (root / "other").mkdir()
    (root / "other" / "a.jpg").write_bytes(b"\xff\xd8\xff" + b"y" * 100)
    flip = root / "current"
    stop = threading.Event()

    def flipper() -> None:
        while not stop.is_set():
            try:
                flip.symlink_to(root / "real")
                flip.unlink()
                flip.mkdir()
                (flip / "a.jpg").write_bytes(b"\xff\xd8\xffz")
                (flip / "a.jpg").unlink()
                flip.rmdir()
            except OSError:
                pass

    thread = threading.Thread(target=flipper, daemon=True)
    thread.start()
    unexpected: list[BaseException] = []
    try:
        for _ in range(4000):
            try:
                with open_media("current/a.jpg", [root], 10_000):
                    pass
            except MediaError:
                pass  # not found / not allowed are the right answers mid-swap
            except Exception as exc:
                unexpected.append(exc)
    finally:
        stop.set()
        thread.join(5)
    assert not unexpected, f"{len(unexpected)} raw errors, e.g. {unexpected[0]!r}"
    assert os.path.realpath(root) == str(root)
