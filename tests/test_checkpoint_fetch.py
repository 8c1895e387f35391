"""Checkpoints by URL: fetched once per node into the local cache (file lock, atomic rename, size check), reused
by every other process of the node; one-line errors. The S3 server is moto on loopback; the actors are real Ray
actors (separate processes) sharing one cache folder, as the actors of one node do."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from magicseg_models.annotation.segmenter import SegmenterWeightsError, build_tiny_sam, make_segmenter
from magicseg_models.config import SegmenterConfig
from magicseg_models.weights.fetch import CheckpointFetchError, cache_path, cached_checkpoint, local_checkpoint

pytestmark = pytest.mark.s3


def _upload_sam(bucket: str, tmp_path, name: str = "sam_tiny.pth") -> tuple[str, int]:
    import s3fs

    path = tmp_path / name
    torch.save(build_tiny_sam().state_dict(), path)
    url = f"{bucket}/weights/{name}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}).put(str(path), url)
    return url, path.stat().st_size


class CheckpointUser:
    """What a segmenter actor does with ``segmenter.checkpoint``: fetch it (or find it), then load it."""

    def load(self, url: str) -> dict:
        import torch

        from magicseg_models.annotation.segmenter import build_tiny_sam
        from magicseg_models.weights.fetch import local_checkpoint

        checkpoint = local_checkpoint(url, label="segmenter.checkpoint")
        build_tiny_sam().load_state_dict(torch.load(checkpoint.path, map_location="cpu", weights_only=True))
        return {"pid": os.getpid(), "downloaded": checkpoint.downloaded, "path": checkpoint.path,
                "size": checkpoint.size}


@pytest.mark.slow  # ~35 s: two actors with their own runtime environment start on a local Ray
def test_s3_checkpoint_is_fetched_once_per_node_and_reused_by_a_second_actor(s3_bucket, local_ray, tmp_path,
                                                                             monkeypatch):
    import ray
    from ray import cloudpickle

    url, size = _upload_sam(s3_bucket, tmp_path)
    cache = tmp_path / "node-cache"
    monkeypatch.setenv("MAGICSEG_CACHE", str(cache))
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor class travels with the call
    env = {"MAGICSEG_CACHE": str(cache), "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]}
    actor = ray.remote(num_cpus=1)(CheckpointUser).options(runtime_env={"env_vars": env})
    first, second = actor.remote(), actor.remote()
    ray.get([first.__ray_ready__.remote(), second.__ray_ready__.remote()])
    # both ask at once: the node-wide lock lets one download while the other waits, then reuses the file
    results = ray.get([first.load.remote(url), second.load.remote(url)])
    assert results[0]["pid"] != results[1]["pid"]
    assert sorted(r["downloaded"] for r in results) == [False, True]
    assert {r["path"] for r in results} == {cache_path(url)} and all(r["size"] == size for r in results)
    stamp = os.stat(cache_path(url)).st_mtime_ns
    # a later process of the node finds it complete, with no network: the object can even be gone
    import s3fs

    s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}).rm(url)
    again = local_checkpoint(url)
    assert not again.downloaded and again.size == size and os.stat(again.path).st_mtime_ns == stamp
    assert not [p for p in os.listdir(os.path.dirname(again.path)) if ".part-" in p]  # no temporary left
    for a in (first, second):
        ray.kill(a)


def test_a_damaged_cached_file_is_fetched_again(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("MAGICSEG_CACHE", str(tmp_path / "cache"))
    url, size = _upload_sam(s3_bucket, tmp_path)
    assert cached_checkpoint(url) is None
    path = local_checkpoint(url).path
    assert cached_checkpoint(url) == path
    with open(path, "r+b") as f:  # a truncated copy (a disk filled up, a hand copy gone wrong)
        f.truncate(size // 2)
    assert cached_checkpoint(url) is None
    fetched = local_checkpoint(url)
    assert fetched.downloaded and os.path.getsize(fetched.path) == size


def test_segmenter_checkpoint_url_errors_are_one_line(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("MAGICSEG_CACHE", str(tmp_path / "cache"))
    missing = f"{s3_bucket}/weights/sam_vit_b_01ec64.pth"
    with pytest.raises(SegmenterWeightsError) as info:
        make_segmenter(SegmenterConfig(model_type="vit_b", checkpoint=missing), device="cpu")
    message = str(info.value)
    assert "\n" not in message and missing in message and "not found" in message
    # a file that is not a SAM of that size: fetched, then refused naming the URL
    url, _ = _upload_sam(s3_bucket, tmp_path)
    with pytest.raises(SegmenterWeightsError, match="is not a SAM vit_b checkpoint") as info:
        make_segmenter(SegmenterConfig(model_type="vit_b", checkpoint=url), device="cpu")
    assert url in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointFetchError, match="cannot be reached"):
        local_checkpoint("s3://bucket/x.pth", {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}})


def test_cache_key_and_messages_leave_out_query_and_userinfo(tmp_path, monkeypatch):
    from magicseg_models.weights.fetch import public_url

    monkeypatch.setenv("MAGICSEG_CACHE", str(tmp_path))
    signed = "https://user:pw@example.com/w/sam.pth?X-Amz-Signature=abc&X-Amz-Expires=60"
    assert public_url(signed) == "https://example.com/w/sam.pth"
    assert cache_path(signed) == cache_path("https://example.com/w/sam.pth?X-Amz-Signature=other")
    assert cache_path(signed).startswith(str(tmp_path / "checkpoints")) and cache_path(signed).endswith("/sam.pth")


@pytest.fixture
def http_files(tmp_path):
    """A plain HTTP server on loopback serving ``tmp_path/served`` (what dl.fbaipublicfiles.com is to a node)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_https_style_urls_say_missing_or_unreachable_and_fetch_once(http_files, tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("MAGICSEG_CACHE", str(tmp_path / "cache"))
    root, base = http_files
    with pytest.raises(CheckpointFetchError, match=r"^segmenter.checkpoint http://\S+/absent.pth not found$"):
        local_checkpoint(f"{base}/absent.pth", label="segmenter.checkpoint")
    with socket.socket() as s:  # a port nothing listens on: the server is unreachable, the file is not "missing"
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/sam.pth"
    with pytest.raises(CheckpointFetchError, match="cannot be reached") as info:
        local_checkpoint(dead, label="segmenter.checkpoint")
    assert "\n" not in str(info.value) and "not found" not in str(info.value)
    torch.save(build_tiny_sam().state_dict(), root / "sam_tiny.pth")
    first = local_checkpoint(f"{base}/sam_tiny.pth")
    (root / "sam_tiny.pth").unlink()  # the second use needs no server
    second = local_checkpoint(f"{base}/sam_tiny.pth")
    assert first.downloaded and not second.downloaded and first.path == second.path
    assert second.size == os.path.getsize(second.path) > 0


def test_unset_checkpoint_means_the_release_file_of_the_model_type():
    from magicseg_models.config import SAM_CHECKPOINT_URLS, load_config

    for model_type, name in (("vit_h", "sam_vit_h_4b8939.pth"), ("vit_l", "sam_vit_l_0b3195.pth"),
                             ("vit_b", "sam_vit_b_01ec64.pth")):
        config = SegmenterConfig(model_type=model_type)
        assert config.checkpoint_source == SAM_CHECKPOINT_URLS[model_type] and config.checkpoint_source.endswith(name)
    sd15 = load_config("build", "sd15", overrides=["annotate.segmenter.model_type=vit_b",
                                                   "annotate.segmenter.checkpoint=null"])
    assert sd15.annotate.segmenter.checkpoint_source.endswith("sam_vit_b_01ec64.pth")
    assert SegmenterConfig(checkpoint="/w/mine.pth").checkpoint_source == "/w/mine.pth"


def test_a_checkpoint_of_the_wrong_size_names_what_does_not_fit(tmp_path):
    path = tmp_path / "sam_tiny.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    with pytest.raises(SegmenterWeightsError) as info:
        make_segmenter(SegmenterConfig(model_type="vit_b", checkpoint=str(path)), device="cpu")
    message = str(info.value)
    assert "\n" not in message and "Error(s) in loading" not in message
    assert "Missing key" in message or "size mismatch" in message or "Unexpected key" in message
