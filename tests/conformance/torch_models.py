"""jaxseg's image models written independently in PyTorch, for the conformance tests and the
train-step benchmark. Each factory takes the `torch` module (imported by the caller, so this
file imports without torch) and returns an `nn.Module` computing NCHW."""

from __future__ import annotations


def torch_unet(torch, depth: int, base: int, classes: int, in_channels: int):
    nn = torch.nn

    class Block(nn.Sequential):
        def __init__(self, cin, cout):
            super().__init__(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            )

    class TorchUNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [base * 2**i for i in range(depth + 1)]
            self.encoder = nn.ModuleList(
                [Block(in_channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth)]
            )
            self.bottleneck = Block(widths[depth - 1], widths[depth])
            self.up = nn.ModuleList([nn.Conv2d(widths[i + 1], widths[i], 3, padding=1) for i in reversed(range(depth))])
            self.decoder = nn.ModuleList([Block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
            self.head = nn.Conv2d(widths[0], classes, 1)

        def forward(self, x):
            skips = []
            for block in self.encoder:
                x = block(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottleneck(x)
            for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
                x = up(nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
                x = block(torch.cat([x, skip], 1))
            return self.head(x)

    return TorchUNet()


def torch_fcn(torch, stages: int, base: int, classes: int, in_channels: int, norm: str):
    nn, F = torch.nn, torch.nn.functional

    class TorchFCN(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [base * 2**i for i in range(stages)]
            self.convs = nn.ModuleList(
                [nn.Conv2d(in_channels if i == 0 else widths[i - 1], w, 3, padding=1) for i, w in enumerate(widths)]
            )
            make = (lambda w: nn.BatchNorm2d(w)) if norm == "batch" else (lambda w: nn.GroupNorm(min(8, w), w, 1e-6))
            self.norms = nn.ModuleList([make(w) for w in widths])
            self.score_last = nn.Conv2d(widths[-1], classes, 1)
            self.score_previous = nn.Conv2d(widths[-2], classes, 1)

        def forward(self, x):
            size, features = x.shape[2:], []
            for conv, norm in zip(self.convs, self.norms):
                x = F.max_pool2d(F.relu(norm(conv(x))), 2)
                features.append(x)
            previous = self.score_previous(features[-2])
            up = dict(mode="bilinear", align_corners=False)
            score = F.interpolate(self.score_last(features[-1]), size=previous.shape[2:], **up) + previous
            return F.interpolate(score, size=size, **up)

    return TorchFCN()


def torch_fcos(torch, *, widths, output_stride, fpn, fpn_width, head_width, head_convs, classes):
    """FCOS as `jaxseg.models.FCOSDetector` describes it. Its stride-2 convolutions pad as XLA's
    "SAME" does for even sizes (0 before, 1 after), not torch's symmetric padding=1."""
    nn, F = torch.nn, torch.nn.functional

    class ConvNormReLU(nn.Module):
        def __init__(self, cin, cout, stride, norm):
            super().__init__()
            self.stride = stride
            self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=0 if stride == 2 else 1, bias=False)
            self.norm = nn.BatchNorm2d(cout) if norm == "batch" else nn.GroupNorm(min(8, cout), cout, 1e-6)

        def forward(self, x):
            if self.stride == 2:
                x = F.pad(x, (0, 1, 0, 1))
            return F.relu(self.norm(self.conv(x)))

    class TorchFCOS(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = [2 ** (i + 1) for i in range(len(widths))].index(output_stride)
            self.stages = nn.ModuleList(
                [
                    nn.Sequential(
                        ConvNormReLU(3 if i == 0 else widths[i - 1], w, 2, "batch"), ConvNormReLU(w, w, 1, "batch")
                    )
                    for i, w in enumerate(widths)
                ]
            )
            used = widths[self.first :] if fpn else widths[-1:]
            self.laterals = nn.ModuleList([nn.Conv2d(w, fpn_width, 1) for w in used])
            self.smooth = ConvNormReLU(fpn_width, fpn_width, 1, "batch")
            tower = lambda: nn.Sequential(  # noqa: E731
                *[ConvNormReLU(fpn_width if i == 0 else head_width, head_width, 1, "group") for i in range(head_convs)]
            )
            self.class_tower, self.box_tower = tower(), tower()
            self.class_out = nn.Conv2d(head_width, classes, 3, padding=1)
            self.box_out = nn.Conv2d(head_width, 4, 3, padding=1)
            self.centerness_out = nn.Conv2d(head_width, 1, 3, padding=1)

        def forward(self, x):
            maps = []
            for stage in self.stages:
                x = stage(x)
                maps.append(x)
            maps = maps[self.first :]
            fused = self.laterals[-1](maps[-1])
            if len(self.laterals) == 1:
                fused = F.interpolate(fused, scale_factor=2 ** (len(maps) - 1), mode="nearest")
            for lateral, feature in zip(reversed(self.laterals[:-1]), reversed(maps[:-1])):
                fused = lateral(feature) + F.interpolate(fused, scale_factor=2, mode="nearest")
            features = self.smooth(fused)
            classes, boxes = self.class_tower(features), self.box_tower(features)
            flat = lambda a: a.permute(0, 2, 3, 1).reshape(a.shape[0], -1, a.shape[1])  # noqa: E731
            return {
                "classes": flat(self.class_out(classes)),
                "distances": flat(torch.exp(self.box_out(boxes).clamp(-10, 10)) * output_stride),
                "centerness": flat(self.centerness_out(boxes))[..., 0],
            }

    return TorchFCOS()
