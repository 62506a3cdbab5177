"""CIFAR-size networks that timm lacks (32×32 inputs, 3×3 stems), plus small nets for 28×28.

- He et al. 2016 ResNet-20/32/44/56 with the option-A shortcut: module names match
  akamaster/pytorch_resnet_cifar10, so its checkpoints load exactly.
- 3×3-stem ResNet-18/34/50 (the paper's CIFAR teachers and student), WRN-34-10/20, and
  MobileNetV2 for 32×32 (strides adapted, as in the robustness-distillation literature).
- The alpha-beta-CROWN adversarially trained nets (ResNet-2B/4B, CNN-A, ConvSmall, OVAL
  base/deep), rebuilt from ``../shared/data/weights/README.md`` so those weights load.
- ``small_cnn``: a compact BN CNN for Fashion-MNIST/MNIST-size teachers and students.

No model here knows about normalisation or distribution: ``NormalizedModel`` adds the
former, ``derd_scale.distributed`` the latter.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Classifier(nn.Module):
    """``forward(x) = classifier(forward_features(x))`` — the split Eq. 7's L_a needs.

    Subclasses define ``forward_features`` and name their final linear layer in ``head_name``.
    """

    head_name = "linear"

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.get_classifier()(self.forward_features(x))


# --------------------------------------------------------------------------------------
# He et al. ResNet-(6n+2), option A (akamaster)
# --------------------------------------------------------------------------------------


class _LambdaLayer(nn.Module):
    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Option A: subsample spatially and zero-pad channels; no parameters.
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlockA(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _LambdaLayer(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifarA(_Classifier):
    """ResNet-(6n+2) for CIFAR; ``forward_features`` returns the pooled 64-d features."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet-A depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, n, 1)
        self.layer2 = self._make_layer(2 * width, n, 2)
        self.layer3 = self._make_layer(4 * width, n, 2)
        self.linear = nn.Linear(4 * width, num_classes)
        self.num_features = 4 * width
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(_BasicBlockA(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


# --------------------------------------------------------------------------------------
# 3×3-stem ResNet-18/34/50 (Kuang Liu style, as used by RSLAD/DFARD/DERD)
# --------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != 4 * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(_Classifier):
    def __init__(self, block: type, num_blocks: list[int], num_classes: int = 10, in_chans: int = 3, width: int = 64):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], 2)
        self.num_features = 8 * width * block.expansion
        self.linear = nn.Linear(self.num_features, num_classes)

    def _make_layer(self, block: type, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


# --------------------------------------------------------------------------------------
# Wide ResNet (Zagoruyko & Komodakis), WRN-34-10/20 as in TRADES/RSLAD
# --------------------------------------------------------------------------------------


class _WideBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal = in_planes == out_planes
        self.shortcut = None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.equal else self.shortcut(o))


class WideResNet(_Classifier):
    head_name = "fc"

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, ch[0], 3, 1, 1, bias=False)
        blocks = []
        for i, stride in enumerate((1, 2, 2)):
            blocks.append(
                nn.Sequential(
                    *[_WideBlock(ch[i] if j == 0 else ch[i + 1], ch[i + 1], stride if j == 0 else 1) for j in range(n)]
                )
            )
        self.block1, self.block2, self.block3 = blocks
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.num_features = ch[3]
        self.fc = nn.Linear(ch[3], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1).flatten(1)


# --------------------------------------------------------------------------------------
# MobileNetV2 for 32×32 (stride-1 stem and first stages)
# --------------------------------------------------------------------------------------


class _InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2Cifar(_Classifier):
    # (expansion, out_planes, num_blocks, stride); strides 1 where ImageNet has 2, for 32×32
    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        layers, in_planes = [], 32
        for expansion, out_planes, n, stride in self.CFG:
            for s in [stride] + [1] * (n - 1):
                layers.append(_InvertedResidual(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        self.layers = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.num_features = 1280
        self.linear = nn.Linear(1280, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(self.layers(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


# --------------------------------------------------------------------------------------
# alpha-beta-CROWN robust CIFAR-10 nets (no BatchNorm)
# --------------------------------------------------------------------------------------


class _CrownBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class CrownResNet(_Classifier):
    """ResNet-2B / ResNet-4B (no BN, dense head), state-dict names as alpha-beta-CROWN."""

    head_name = "linear2"

    def __init__(
        self,
        layers: list[list[tuple[int, int]]],
        in_planes: int,
        flat: int,
        num_classes: int = 10,
        in_chans: int = 3,
        head_relu: bool = True,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, in_planes, 3, 2, 1)
        for i, spec in enumerate(layers, start=1):
            blocks, planes_in = [], in_planes
            for planes, stride in spec:
                blocks.append(_CrownBlock(planes_in, planes, stride))
                planes_in = planes
            in_planes = planes_in
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.n_layers = len(layers)
        self.linear1 = nn.Linear(flat, 100)
        self.linear2 = nn.Linear(100, num_classes)
        self.head_relu = head_relu
        self.num_features = 100

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        for i in range(1, self.n_layers + 1):
            out = getattr(self, f"layer{i}")(out)
        out = self.linear1(out.flatten(1))
        return F.relu(out) if self.head_relu else out


class SequentialClassifier(nn.Module):
    """A plain conv/linear stack whose last Linear is the classifier (CNN-A, ConvSmall, OVAL)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.net = nn.Sequential(*layers)
        self.num_features = layers[-1].in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[:-1](x)

    def get_classifier(self) -> nn.Module:
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # State dicts of these nets are bare Sequential indices (0, 2, 5, ...).
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        if state_dict and not any(k.startswith("net.") for k in state_dict):
            state_dict = {f"net.{k}": v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _conv_stack(
    in_chans: int, convs: list[tuple[int, int, int, int]], flat: int, num_classes: int
) -> SequentialClassifier:
    layers: list[nn.Module] = []
    c = in_chans
    for out, k, s, p in convs:
        layers += [nn.Conv2d(c, out, k, s, p), nn.ReLU()]
        c = out
    layers += [nn.Flatten(), nn.Linear(flat, 100), nn.ReLU(), nn.Linear(100, num_classes)]
    return SequentialClassifier(layers)


# --------------------------------------------------------------------------------------
# Small BN CNN for 28×28 (Fashion-MNIST / MNIST) and other quick experiments
# --------------------------------------------------------------------------------------


class SmallCNN(_Classifier):
    """conv-BN-ReLU ×2 → pool → conv-BN-ReLU ×2 → pool → FC; width controls capacity."""

    head_name = "fc2"

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32, img_size: int = 28):
        super().__init__()
        w = width

        def cbr(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(
            *cbr(in_chans, w), *cbr(w, w), nn.MaxPool2d(2), *cbr(w, 2 * w), *cbr(2 * w, 2 * w), nn.MaxPool2d(2)
        )
        self.fc1 = nn.Linear(2 * w * (img_size // 4) ** 2, 4 * w)
        self.num_features = 4 * w
        self.fc2 = nn.Linear(4 * w, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc1(self.features(x).flatten(1)))


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


def _crown(layers, in_planes, flat):
    return lambda num_classes=10, in_chans=3, **kw: CrownResNet(layers, in_planes, flat, num_classes, in_chans, **kw)


CIFAR_MODELS = {
    "resnet20": lambda num_classes=10, in_chans=3, **kw: ResNetCifarA(20, num_classes, in_chans, **kw),
    "resnet32": lambda num_classes=10, in_chans=3, **kw: ResNetCifarA(32, num_classes, in_chans, **kw),
    "resnet44": lambda num_classes=10, in_chans=3, **kw: ResNetCifarA(44, num_classes, in_chans, **kw),
    "resnet56": lambda num_classes=10, in_chans=3, **kw: ResNetCifarA(56, num_classes, in_chans, **kw),
    "resnet18_cifar": lambda num_classes=10, in_chans=3, **kw: ResNetCifar(
        _BasicBlock, [2, 2, 2, 2], num_classes, in_chans, **kw
    ),
    "resnet34_cifar": lambda num_classes=10, in_chans=3, **kw: ResNetCifar(
        _BasicBlock, [3, 4, 6, 3], num_classes, in_chans, **kw
    ),
    "resnet50_cifar": lambda num_classes=10, in_chans=3, **kw: ResNetCifar(
        _Bottleneck, [3, 4, 6, 3], num_classes, in_chans, **kw
    ),
    "wrn34_10": lambda num_classes=10, in_chans=3, **kw: WideResNet(34, 10, num_classes, in_chans, **kw),
    "wrn34_20": lambda num_classes=10, in_chans=3, **kw: WideResNet(34, 20, num_classes, in_chans, **kw),
    "mobilenetv2_cifar": lambda num_classes=10, in_chans=3, **kw: MobileNetV2Cifar(num_classes, in_chans, **kw),
    # ResNet-2B: stem 3→8 s2; layer1 8→16 s2, 16→16; Flatten 16·8·8.
    "resnet2b": _crown([[(16, 2), (16, 1)]], 8, 1024),
    # ResNet-4B: stem 3→16 s2; layer1 16→32 s2, 32→32; layer2 32→32 s2, 32→32; Flatten 512.
    "resnet4b": _crown([[(32, 2), (32, 1)], [(32, 2), (32, 1)]], 16, 512),
    "cnn_a": lambda num_classes=10, in_chans=3: _conv_stack(
        in_chans, [(16, 4, 2, 1), (32, 4, 2, 1)], 2048, num_classes
    ),
    "conv_small": lambda num_classes=10, in_chans=3: _conv_stack(
        in_chans, [(16, 4, 2, 0), (32, 4, 2, 0)], 1152, num_classes
    ),
    "oval_base": lambda num_classes=10, in_chans=3: _conv_stack(
        in_chans, [(8, 4, 2, 1), (16, 4, 2, 1)], 1024, num_classes
    ),
    "oval_deep": lambda num_classes=10, in_chans=3: _conv_stack(
        in_chans, [(8, 4, 2, 1), (8, 3, 1, 1), (8, 3, 1, 1), (8, 4, 2, 1)], 512, num_classes
    ),
    "small_cnn": lambda num_classes=10, in_chans=1, **kw: SmallCNN(num_classes, in_chans, **kw),
}
