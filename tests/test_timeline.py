"""Video timelines (issue 19): track ids across occlusions, faces followed between detections,
the per-face tables (CSV, Parquet, pandas), summaries and the timeline plot.

The video is synthetic (``poster.benchmark.video.make_face_video``): the repository's astronaut photo
pasted into the frames, moving and tilting, a second (mirrored, smaller) face, and a grey bar that
hides face 0 for a while.  The bundled model gives real predictions on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from poster.inference.batch import BatchOptions, run_batch
from poster.inference.follow import FollowingDetector
from poster.inference.recognizer import Recognizer
from poster.inference.timeline import Timeline, row_columns
from poster.inference.timeline_files import TimelineFiles
from poster.inference.results import FaceResult
from poster.inference.tracking import FaceTracker
from poster.benchmark.video import make_face_video

FRAMES, OCCLUDED = 40, (12, 22)  # face 0 hidden for 10 frames (0.4 s at 25 fps)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_face_video(tmp_path_factory.mktemp("video") / "two_faces.avi", frames=FRAMES, size=(320, 240),
                           faces=2, occlusion=OCCLUDED)


@pytest.fixture(scope="module")
def rec():
    return Recognizer.from_checkpoint(None, fast=True, batch_size=8)


@pytest.fixture(scope="module")
def per_frame(rec, clip):
    video = rec.predict_video(clip.path, detect_every=1)
    return video, list(video)


@pytest.fixture(scope="module")
def followed(rec, clip):
    video = rec.predict_video(clip.path)  # the default: full detection every 5 frames
    return video, list(video)


def _tracks_by_frame(results) -> list[list[int]]:
    return [[f.track for f in r.faces] for r in results]


# ---------------------------------------------------------------------------------------------
# Track ids


def test_tracker_keeps_an_id_through_a_short_occlusion_and_not_a_long_one():
    tracker = FaceTracker(max_gap_s=1.0)
    a, b = (100, 100, 80, 90), (300, 120, 60, 70)
    assert tracker.assign([a, b], 0.0) == [0, 1]
    assert tracker.assign([b], 0.04) == [1]  # face 0 hidden
    moved = (175, 104, 82, 90)  # came back almost a face width further right: no overlap needed
    assert tracker.assign([moved, b], 0.6) == [0, 1]
    assert tracker.assign([b], 0.64) == [1]
    assert tracker.assign([b], 1.5) == [1]
    assert tracker.assign([moved, b], 2.0) == [2, 1]  # gone longer than max_gap_s: a new face
    far = (20, 20, 40, 45)  # a different size elsewhere is never the lost face
    assert tracker.assign([far, b], 2.04) == [3, 1]


def test_track_ids_are_stable_across_the_occlusion(per_frame, followed):
    for _, results in (per_frame, followed):
        ids = _tracks_by_frame(results)
        assert [len(i) for i in ids[:OCCLUDED[0]]] == [2] * OCCLUDED[0]
        assert all(len(i) == 1 for i in ids[OCCLUDED[0] + 1:OCCLUDED[1] - 1])  # only face 1 while hidden
        # face 0 back under its id (followed: found again at the next full detection, <= 4 frames late)
        assert all(sorted(i) == [0, 1] for i in ids[OCCLUDED[1] + 5:])
        assert {t for i in ids for t in i} == {0, 1}
        assert all(r.faces[0].track == 0 for r in results if len(r.faces) == 2)  # left to right: face 0 first


# ---------------------------------------------------------------------------------------------
# Following faces between detections


def test_following_agrees_with_per_frame_detection(per_frame, followed):
    _, base = per_frame
    video, fast = followed
    assert isinstance(video.follower, FollowingDetector)
    assert video.follower.full_detections < FRAMES / 2 < video.follower.followed
    diffs = []
    for a, b in zip(base, fast):
        assert a.frame == b.frame and [f.track for f in a.faces] == [f.track for f in b.faces]
        for fa, fb in zip(a.faces, b.faces):
            assert fa.label == fb.label
            assert np.abs(np.array(fa.box) - np.array(fb.box)).max() < 0.15 * max(fa.box[2:])  # YuNet on a crop
            diffs.append(max(abs(fa.probabilities[c] - fb.probabilities[c]) for c in fa.probabilities))
    assert len(diffs) > FRAMES and max(diffs) < 0.05  # measured: 0.01 on this clip


def test_detect_every_1_is_per_frame_detection(rec, clip, per_frame):
    video, results = per_frame
    assert video.follower is None and video.detect_every == 1
    cap = cv2.VideoCapture(str(clip.path))
    frames = [(i, cap.read()[1]) for i in range(5)]
    cap.release()
    for a, b in zip(rec.predict_frames(str(clip.path), frames), results):
        assert [f.box for f in a.faces] == [f.box for f in b.faces]
        for fa, fb in zip(a.faces, b.faces):
            assert fa.probabilities == pytest.approx(fb.probabilities, abs=1e-6)  # other batch sizes


def test_following_falls_back_to_a_full_detection_when_a_face_is_lost(rec):
    follower = FollowingDetector(rec.detector, every=10)
    frame = np.full((240, 320, 3), 110, np.uint8)
    face = cv2.resize(cv2.imread(str(Path(__file__).resolve().parents[1] / "examples" / "astronaut.jpg"))[30:230, 140:320],
                      (90, 100))
    frame[60:160, 100:190] = face
    assert len(follower.detect(frame)) == 1 and follower.full_detections == 1
    assert len(follower.detect(frame)) == 1 and follower.followed == 1
    empty = np.full_like(frame, 110)
    assert follower.detect(empty) == [] and follower.full_detections == 2  # lost: detected again at once
    assert follower.detect(frame) and follower.full_detections == 3  # nothing followed: full detection


def test_a_followed_face_costs_one_yunet_run_and_a_known_face_is_not_refined_afresh(rec):
    """Following a face is one YuNet run on an upright view of it; the periodic full detection
    runs YuNet on the frame, and a face found where one was followed gets one pass from the
    followed landmarks instead of the detector's 5-pass refinement (which a new face still gets)."""
    follower = FollowingDetector(rec.detector, every=3)
    frame = np.full((240, 320, 3), 110, np.uint8)
    face = cv2.resize(cv2.imread(str(Path(__file__).resolve().parents[1] / "examples" / "astronaut.jpg"))[30:230, 140:320],
                      (90, 100))
    frame[60:160, 100:190] = face
    runs = []
    engine = follower.detector._raw
    follower.detector._raw = follower._unrefined._raw = lambda image: runs.append(image.shape[:2]) or engine(image)
    try:
        first = follower.detect(frame)
        assert len(runs) == 1 + rec.detector.refine  # new face: the frame, then the full refinement
        runs.clear()
        followed = [follower.detect(frame) for _ in range(2)]
        assert runs == [(384, 384)] * 2 and follower.followed == 2
        runs.clear()
        again = follower.detect(frame)  # the third frame since the last full detection
        assert follower.full_detections == 2 and runs == [(240, 320), (384, 384)]
    finally:
        follower.detector._raw = follower._unrefined._raw = engine
    for faces in (*followed, again):  # the same still face, located the same way
        assert len(faces) == 1
        assert np.abs(faces[0].landmarks - first[0].landmarks).max() < 2.0
        assert np.abs(np.subtract(faces[0].box, first[0].box)).max() < 0.1 * first[0].box[2]


def test_a_long_run_gets_the_traced_graph_and_the_same_predictions(clip, followed):
    """Webcams, streams and videos of LONG_RUN_FRAMES or more run the model as the verified traced
    graph (a one-off start-up); shorter ones keep the fast path as it is.  Same predictions."""
    fresh = Recognizer.from_checkpoint(None, fast=True, batch_size=8)
    short = fresh.predict_video(clip.path)
    assert short.frames_expected == FRAMES
    assert fresh.predict_video(clip.path, every_n=3, max_frames=10).frames_expected == 10
    assert fresh.predict_video(clip.path, every_n=3).frames_expected == -(-FRAMES // 3)
    assert not fresh.prepare_for_frames(short.frames_expected) and not fresh.fast_inference.traced
    fresh.LONG_RUN_FRAMES = FRAMES  # this clip is now a long run
    results = list(fresh.predict_video(clip.path))
    assert fresh.fast_inference.traced and "traced graph" in fresh.engine
    _, reference = followed
    assert len(results) == len(reference)
    for a, b in zip(reference, results):
        assert [f.track for f in a.faces] == [f.track for f in b.faces]
        for fa, fb in zip(a.faces, b.faces):
            assert fa.probabilities == pytest.approx(fb.probabilities, abs=1e-4)
    assert fresh.prepare_for_frames(None)  # no known end: traced (here: already)


# ---------------------------------------------------------------------------------------------
# The timeline: DataFrame, summary, files


def test_to_dataframe_one_row_per_face_per_frame(followed, rec):
    video, results = followed
    df = video.to_dataframe()
    assert list(df.columns) == row_columns(rec.class_names)
    assert len(df) == sum(len(r.faces) for r in results)
    assert df["time_s"].tolist() == pytest.approx([r.frame / 25.0 for r in results for _ in r.faces])
    first = results[0].faces[0]
    row = df[(df.frame == 0) & (df.track == first.track)].iloc[0]
    assert row["p_happy"] == pytest.approx(first.probabilities["happy"]) and row["label"] == first.label
    smooth = df[[f"smooth_{c}" for c in rec.class_names]].to_numpy()
    np.testing.assert_allclose(smooth.sum(1), 1.0, atol=1e-9)
    summary = {s.track: s for s in video.timeline.summary()}
    assert set(summary) == {0, 1}
    hidden = (OCCLUDED[1] - OCCLUDED[0]) / 25.0
    assert summary[1].seen_s == pytest.approx(FRAMES / 25.0)
    assert summary[0].seen_s == pytest.approx(FRAMES / 25.0 - hidden, abs=0.1)  # the occlusion is not time seen
    assert summary[0].end_s - summary[0].start_s == pytest.approx(FRAMES / 25.0)
    assert sum(summary[0].share.values()) == pytest.approx(1.0)
    assert summary[0].dominant == max(summary[0].share, key=summary[0].share.get)


def _face(box, probs, track, names):
    best = int(np.argmax(probs))
    return FaceResult(tuple(box), None, 0.9, dict(zip(names, probs)), names[best], float(probs[best]), 0, track)


def test_share_of_time_follows_the_timestamps_and_repairs_bad_ones():
    names = ("happy", "sad")
    tl = Timeline(names, "v", fps=10.0)
    happy, sad = np.array([0.9, 0.1]), np.array([0.2, 0.8])
    stamps = [0.0, 0.1, 0.2, 0.35, 0.45, 0.45, None, 0.3]  # irregular, standing still, missing, backwards
    times = [tl.frame_time(s) for s in stamps]
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.35, 0.45, 0.55, 0.65, 0.75])
    assert tl.timestamps_repaired == 3 and tl.irregular_intervals == 1
    for i, t in enumerate(times):
        p = happy if i < 4 else sad
        faces = [_face((0, 0, 10, 10), p, 0, names)] + ([_face((50, 0, 10, 10), sad, 1, names)] if i in (0, 6) else [])
        tl.add(i, t, faces, [p, sad][:len(faces)])
    s, other = tl.summary()
    # each observation lasts until the next one: happy 0 -> 0.45, sad 0.45 -> 0.75 + one interval
    assert s.share["happy"] == pytest.approx(0.45 / 0.85) and s.dominant == "happy"
    assert s.seen_s == pytest.approx(0.85) and s.frames == 8
    # face 1 seen at 0 and 0.65 only: the gap counts at most 2 intervals, not as time seen
    assert other.seen_s == pytest.approx(0.2 + 0.1) and other.frames == 2 and other.end_s == pytest.approx(0.75)


def test_plotted_series_stays_bounded():
    names = ("a", "b")
    tl = Timeline(names, "long", fps=25.0, keep_rows=False)
    p = np.array([0.5, 0.5])
    for i in range(9000):
        tl.add(i, i / 25.0, [_face((0, 0, 10, 10), p, 0, names)], [p])
    times, probs = tl.series(0)
    assert len(times) < 4100 and probs.shape == (len(times), 2) and tl.rows == []
    assert times[0] == pytest.approx(0.02, abs=0.05) and times[-1] == pytest.approx(8999 / 25.0, abs=0.2)


def test_poster_predict_writes_the_timeline_files(rec, clip, followed, tmp_path):
    summary, results_path = run_batch(rec, [str(clip.path)], tmp_path, BatchOptions(annotate=False))
    assert summary.frames == FRAMES
    folder = tmp_path / "timelines"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"two_faces{s}" for s in (".tracks.csv", ".tracks.parquet", ".summary.csv",
                                                        ".summary.json", ".timeline.png"))
    csv_table = pd.read_csv(folder / "two_faces.tracks.csv")
    parquet = pd.read_parquet(folder / "two_faces.tracks.parquet")
    expected = followed[0].to_dataframe()
    assert len(csv_table) == len(parquet) == len(expected)
    pd.testing.assert_frame_equal(parquet, expected, check_dtype=False)
    np.testing.assert_allclose(csv_table["p_happy"], expected["p_happy"], atol=1e-6)
    assert csv_table["track"].tolist() == expected["track"].tolist()
    info = json.loads((folder / "two_faces.summary.json").read_text())
    assert info["frames"] == FRAMES and info["tracks"] == 2 and [f["track"] for f in info["faces"]] == [0, 1]
    assert info["detect_every"] == 5 and info["full_detections"] < FRAMES / 2
    assert pd.read_csv(folder / "two_faces.summary.csv")["dominant"].tolist() == [f["dominant"] for f in info["faces"]]
    png = cv2.imread(str(folder / "two_faces.timeline.png"))
    assert png is not None and png.shape[0] > 300 and png.shape[1] > 800
    records = [json.loads(line) for line in results_path.read_text().splitlines()]
    assert {r["track"] for r in records if r.get("face") is not None} == {0, 1}


def test_no_timeline_and_unreadable_videos_leave_no_timeline_files(rec, clip, tmp_path):
    run_batch(rec, [str(clip.path)], tmp_path / "off", BatchOptions(annotate=False, timeline=False, max_frames=2))
    assert not (tmp_path / "off" / "timelines").exists()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    summary, _ = run_batch(rec, [str(bad)], tmp_path / "bad", BatchOptions(annotate=False))
    assert summary.unreadable == [str(bad)]
    assert list((tmp_path / "bad" / "timelines").iterdir()) == []


def test_rows_stream_to_disk_and_the_csv_is_readable_before_the_end(tmp_path, monkeypatch):
    import poster.inference.timeline_files as tf

    monkeypatch.setattr(tf, "ROW_GROUP", 4)
    names = ("happy", "sad")
    files = TimelineFiles(tmp_path, "clip", names)
    tl = Timeline(names, "clip", fps=25.0, keep_rows=False, sink=files.write)
    p = np.array([0.7, 0.3])
    for i in range(10):
        tl.add(i, i / 25.0, [_face((0, 0, 10, 10), p, 0, names)], [p])
    partial = tmp_path / "clip.tracks.csv.partial"
    assert len(pd.read_csv(partial)) == 10 and not (tmp_path / "clip.tracks.csv").exists()
    files.close(tl)
    assert not partial.exists()
    import pyarrow.parquet as pq

    table = pq.ParquetFile(tmp_path / "clip.tracks.parquet")
    assert table.metadata.num_rows == 10 and table.num_row_groups == 3  # 4 + 4 + 2: flushed as it went


# ---------------------------------------------------------------------------------------------
# Bad input: what was processed is kept, named and counted


def test_a_corrupt_frame_is_counted_in_the_timeline_summary(rec, tmp_path):
    clip = make_face_video(tmp_path / "c.avi", frames=8, size=(320, 240))
    data = bytearray(clip.path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8 and data[i + 2] == 0xFF]
    data[starts[3]:starts[3] + 600] = bytes(600)  # the fourth frame's JPEG header wiped
    clip.path.write_bytes(bytes(data))
    summary, _ = run_batch(rec, [str(clip.path)], tmp_path / "run", BatchOptions(annotate=False))
    assert summary.frames == 7 and summary.frames_failed == 1
    info = json.loads((tmp_path / "run" / "timelines" / "c.summary.json").read_text())
    assert info["frames"] == 7 and info["frames_failed"] == 1
    table = pd.read_parquet(tmp_path / "run" / "timelines" / "c.tracks.parquet")
    assert 3 not in set(table["frame"]) and set(table["track"]) == {0}


def test_an_interrupted_video_keeps_its_timeline(rec, clip, tmp_path, monkeypatch):
    from poster.inference import tracking

    calls = {"n": 0}
    real = tracking.VideoTracker.update

    def stop_after_5(self, faces, time_s):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # Ctrl-C, or a webcam that stops mid-run
        return real(self, faces, time_s)

    monkeypatch.setattr(tracking.VideoTracker, "update", stop_after_5)
    summary, _ = run_batch(rec, [str(clip.path)], tmp_path, BatchOptions(annotate=False))
    assert summary.interrupted
    folder = tmp_path / "timelines"
    assert not list(folder.glob("*.partial"))
    table = pd.read_csv(folder / "two_faces.tracks.csv")
    assert sorted(set(table["frame"])) == [0, 1, 2, 3, 4]
    assert json.loads((folder / "two_faces.summary.json").read_text())["frames"] == 5
    assert cv2.imread(str(folder / "two_faces.timeline.png")) is not None
