"""The batch form of the random crop and flip, and --augment-on, which runs it on the training device.

The batch form must draw the per-image form's distribution (each image its own offsets in [-p, p]²
and its own flip) with other random numbers; ``loader`` (and ``auto`` on a CPU) must keep training
exactly as before.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from certify.checkpoint import load_checkpoint
from certify.cli import main
from certify.data.augment import RandomCropFlip
from certify.params import ParamError
from certify.training import TrainConfig, train
from certify.training.data import augment_place


def reference_batch(x: torch.Tensor, aug: RandomCropFlip, generator: torch.Generator) -> torch.Tensor:
    """A plain loop over the images: the offsets and flips the batch form draws from
    ``generator`` (in its order), each image padded, cropped and mirrored on its own."""
    n, _, height, width = x.shape
    p = aug.padding
    offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator) if p else torch.zeros(n, 2, dtype=torch.long)
    mirrored = torch.rand(n, generator=generator) < 0.5 if aug.flip else torch.zeros(n, dtype=torch.bool)
    out = []
    for k in range(n):
        image = x[k]
        if p:
            if aug.edge:
                image = F.pad(image[None], (p, p, p, p), mode="replicate")[0]
            else:
                image = F.pad(image, (p, p, p, p))
        top, left = offsets[k].tolist()
        crop = image[:, top:top + height, left:left + width]
        out.append(crop.flip(-1) if mirrored[k] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (2, 5, 7)])
@pytest.mark.parametrize("padding", [0, 1, 3])
@pytest.mark.parametrize("edge", [False, True])
@pytest.mark.parametrize("flip", [False, True])
def test_batch_form_crops_each_image_at_its_own_offsets(shape, padding, edge, flip):
    x = torch.rand(64, *shape)  # distinct images, distinct pixels: a wrong gather shows
    aug = RandomCropFlip(padding=padding, flip=flip, edge=edge)
    got = aug.batch(x, generator=torch.Generator().manual_seed(7))
    want = reference_batch(x, aug, torch.Generator().manual_seed(7))
    assert got.shape == x.shape and got.dtype == x.dtype
    assert torch.equal(got, want)
    if padding or flip:  # the batch is really augmented, and per image, not one draw for all
        assert not torch.equal(got, x)
        assert len({tuple(aug.batch(x[:1].expand(64, *shape))[k].flatten().tolist())
                    for k in range(64)}) > 1


def test_batch_form_draws_from_the_devices_global_rng():
    x = torch.rand(16, 1, 28, 28)
    aug = RandomCropFlip(padding=2, flip=True, edge=True)
    torch.manual_seed(3)
    first = aug.batch(x)
    torch.manual_seed(3)
    assert torch.equal(aug.batch(x), first)
    assert torch.equal(first, reference_batch(x, aug, torch.Generator().manual_seed(3)))


def test_per_image_form_draws_as_before():
    """__call__ keeps its numbers: offsets (top, left) from one randint of 2, then one rand for the
    flip, from the global RNG."""
    image = torch.rand(3, 6, 6)
    for edge in (False, True):
        aug = RandomCropFlip(padding=2, flip=True, edge=edge)
        torch.manual_seed(11)
        got = [aug(image) for _ in range(20)]
        torch.manual_seed(11)
        for out in got:
            top, left = torch.randint(0, 5, (2,)).tolist()
            padded = (F.pad(image[None], (2, 2, 2, 2), mode="replicate")[0] if edge
                      else F.pad(image, (2, 2, 2, 2)))
            want = padded[:, top:top + 6, left:left + 6]
            want = want.flip(-1) if torch.rand(()).item() < 0.5 else want
            assert torch.equal(out, want)


def test_offsets_and_flips_are_uniform_and_independent():
    """Decode each image's shift and flip from a 9×9 image whose pixel (i, j) holds i·9 + j + 1:
    the centre gives the shift (flipping an odd width keeps the centre column), its left neighbour
    whether the image was mirrored. Every (shift, flip) cell of 2·5² must be drawn ~1/50 of the time."""
    p, side, n = 2, 9, 100_000
    image = (torch.arange(side * side, dtype=torch.float32) + 1).view(1, 1, side, side)
    out = RandomCropFlip(padding=p, flip=True).batch(image.expand(n, 1, side, side),
                                                     generator=torch.Generator().manual_seed(0))
    centre = out[:, 0, side // 2, side // 2].long() - 1
    dy, dx = centre // side - side // 2, centre % side - side // 2
    mirrored = (out[:, 0, side // 2, side // 2 - 1].long() - 1 - centre) == 1
    assert dy.min() == dx.min() == -p and dy.max() == dx.max() == p
    cells = ((dy + p) * (2 * p + 1) + dx + p) * 2 + mirrored.long()
    counts = torch.bincount(cells, minlength=2 * (2 * p + 1) ** 2).double()
    expected = n / len(counts)
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 85.4, chi2  # the 0.999 quantile of chi-square with 49 degrees of freedom
    assert abs(mirrored.double().mean().item() - 0.5) < 0.01
    assert (counts / expected - 1).abs().max() < 0.15


def test_auto_resolves_by_device_and_batch_needs_a_batch_form():
    crop = RandomCropFlip(padding=1, flip=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert augment_place("auto", crop, cpu) == "loader"
    assert augment_place("auto", crop, None) == "loader"
    assert augment_place("auto", crop, cuda) == "batch"
    assert augment_place("auto", None, cuda) == "batch"  # nothing to augment
    assert augment_place("loader", crop, cuda) == "loader"
    assert augment_place("batch", crop, cpu) == "batch"

    def per_image_only(image):  # e.g. a torchvision pipeline on PIL images
        return image

    assert augment_place("auto", per_image_only, cuda) == "loader"
    with pytest.raises(ParamError, match="augment_on: batch needs an augmentation with a batch form"):
        augment_place("batch", per_image_only, cpu)


def config(data_dir, **changes) -> TrainConfig:
    base = dict(dataset="fashion-mnist", arch="small_cnn", arch_kwargs={"width": 4, "hidden": 16},
                objective_params={"sigma": 0.5}, epochs=2, batch_size=8, lr=0.05, lr_step_size=1,
                lr_gamma=0.5, data_dir=str(data_dir), seed=4, augment="crop-edge")
    return TrainConfig(**(base | changes))


def quiet(_line):
    pass


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


def test_loader_is_the_default_on_cpu_and_batch_augments_on_the_device(fake_fmnist, tmp_path, monkeypatch):
    auto = train(config(fake_fmnist), tmp_path / "auto.pt", progress=False, log=quiet)
    loader = train(config(fake_fmnist, augment_on="loader"), tmp_path / "loader.pt", progress=False,
                   log=quiet)
    assert auto.training["config"]["augment_on"] == loader.training["config"]["augment_on"] == "loader"
    assert same_weights(auto.state_dict, loader.state_dict)

    seen = []
    per_batch = RandomCropFlip.batch

    def spy(self, x, generator=None):
        seen.append((tuple(x.shape), x.device.type))
        return per_batch(self, x, generator)

    def no_per_image(self, image):
        raise AssertionError("augment_on batch ran the per-image transform")

    monkeypatch.setattr(RandomCropFlip, "batch", spy)
    monkeypatch.setattr(RandomCropFlip, "__call__", no_per_image)
    batch = train(config(fake_fmnist, augment_on="batch"), tmp_path / "batch.pt", progress=False,
                  log=quiet)
    assert batch.training["config"]["augment_on"] == "batch"
    assert seen == [((8, 1, 28, 28), "cpu")] * 10  # 40 images, 5 batches, 2 epochs
    # Not compared with loader: without a flip, CPU randint happens to draw the per-image offsets'
    # numbers in the same order, so the two runs may agree. It must differ from no augmentation.
    none = train(config(fake_fmnist, augment="none"), tmp_path / "none.pt", progress=False, log=quiet)
    assert not same_weights(batch.state_dict, none.state_dict)


def test_cli_records_where_augmentation_ran(fake_fmnist, tmp_path):
    common = ["--arch", "small_cnn", "--arch-opt", "width=4", "--arch-opt", "hidden=16", "--epochs", "1",
              "--batch", "8", "--train-count", "16", "--eval-count", "12", "--augment", "crop-zero",
              "--device", "cpu", "--data-dir", str(fake_fmnist), "--quiet"]
    for flag, recorded in ((["--augment-on", "batch"], "batch"), ([], "loader")):
        out = tmp_path / f"{recorded}.pt"
        with pytest.raises(SystemExit) as exit_info:
            main(["train", *common, *flag, "--out", str(out)])
        assert exit_info.value.code == 0
        assert load_checkpoint(out).training["config"]["augment_on"] == recorded
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *common, "--augment-on", "gpu", "--out", str(tmp_path / "x.pt")])
    assert exit_info.value.code == 2


def test_resumed_batch_run_equals_uninterrupted_run(fake_fmnist, tmp_path):
    straight = train(config(fake_fmnist, augment_on="batch"), tmp_path / "a.pt", progress=False, log=quiet)
    train(config(fake_fmnist, augment_on="batch", epochs=1), tmp_path / "b.pt", progress=False, log=quiet)
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    resumed = train(config(fake_fmnist, augment_on="batch"), tmp_path / "b.pt", resume=True,
                    progress=False, log=quiet)
    assert resumed.epoch == 2
    assert same_weights(straight.state_dict, resumed.state_dict)


def test_resume_may_move_augmentation_and_records_the_new_place(fake_fmnist, tmp_path):
    train(config(fake_fmnist, epochs=1), tmp_path / "m.pt", progress=False, log=quiet)
    resumed = train(config(fake_fmnist, augment_on="batch"), tmp_path / "m.pt", resume=True,
                    progress=False, log=quiet)
    assert resumed.epoch == 2 and resumed.training["config"]["augment_on"] == "batch"
