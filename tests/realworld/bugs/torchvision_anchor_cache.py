# Source: https://github.com/pytorch/vision/issues/1689 ("Memory leak in forward pass on FasterRCNN
# with varying aspect ratio"; fixed in pull request #1657, see also issue #3667)
# Bug: the RPN's `AnchorGenerator` memoizes the anchors of every feature-map layout in
# `self._cache`, keyed by the grid sizes and strides. Training with batch size 1 on images of
# varying aspect ratio gives a new key at almost every step, so a full set of anchors for all FPN
# levels is minted and kept each step: "The memory keeps increasing on the forward pass".
# Fix: clear the cache at the end of `forward` (what #1657 did).
# Expected finding: memory-growth at the line that stores the anchors in `self._cache`.
import random

import torch
import torch.nn.functional as F
from torch import nn


class ImageList(object):
    def __init__(self, tensors, image_sizes):
        self.tensors = tensors
        self.image_sizes = image_sizes


class AnchorGenerator(nn.Module):
    def __init__(self, sizes=(128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0)):
        super(AnchorGenerator, self).__init__()
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (aspect_ratios,) * len(sizes)
        assert len(sizes) == len(aspect_ratios)
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self.cell_anchors = None
        self._cache = {}

    @staticmethod
    def generate_anchors(scales, aspect_ratios, dtype=torch.float32, device="cpu"):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        aspect_ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(aspect_ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        base_anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        return base_anchors.round()

    def set_cell_anchors(self, dtype, device):
        if self.cell_anchors is not None:
            return
        self.cell_anchors = [self.generate_anchors(sizes, aspect_ratios, dtype, device)
                             for sizes, aspect_ratios in zip(self.sizes, self.aspect_ratios)]

    def num_anchors_per_location(self):
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def grid_anchors(self, grid_sizes, strides):
        anchors = []
        for size, stride, base_anchors in zip(grid_sizes, strides, self.cell_anchors):
            grid_height, grid_width = size
            stride_height, stride_width = stride
            device = base_anchors.device
            shifts_x = torch.arange(0, grid_width, dtype=torch.float32, device=device) * stride_width
            shifts_y = torch.arange(0, grid_height, dtype=torch.float32, device=device) * stride_height
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x = shift_x.reshape(-1)
            shift_y = shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts.view(-1, 1, 4) + base_anchors.view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def cached_grid_anchors(self, grid_sizes, strides):
        key = tuple(grid_sizes) + tuple(strides)
        if key in self._cache:
            return self._cache[key]
        anchors = self.grid_anchors(grid_sizes, strides)
        self._cache[key] = anchors  # EXPECT: memory-growth
        return anchors

    def forward(self, image_list, feature_maps):
        grid_sizes = tuple([feature_map.shape[-2:] for feature_map in feature_maps])
        image_size = image_list.tensors.shape[-2:]
        strides = tuple((image_size[0] / g[0], image_size[1] / g[1]) for g in grid_sizes)
        self.set_cell_anchors(feature_maps[0].dtype, feature_maps[0].device)
        anchors_over_all_feature_maps = self.cached_grid_anchors(grid_sizes, strides)
        anchors = []
        for i, (image_height, image_width) in enumerate(image_list.image_sizes):
            anchors_in_image = []
            for anchors_per_feature_map in anchors_over_all_feature_maps:
                anchors_in_image.append(anchors_per_feature_map)
            anchors.append(anchors_in_image)
        anchors = [torch.cat(anchors_per_image) for anchors_per_image in anchors]
        return anchors


class TinyFPN(nn.Module):
    """Stand-in for resnet50_fpn: four levels at strides 4, 8, 16, 32."""

    def __init__(self, channels=8):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 4, stride=4)
        self.downs = nn.ModuleList([nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(3)])

    def forward(self, x):
        features = [F.relu(self.stem(x))]
        for down in self.downs:
            features.append(F.relu(down(features[-1])))
        return features


class RPNHead(nn.Module):
    def __init__(self, in_channels, num_anchors):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)

    def forward(self, features):
        logits, deltas = [], []
        for feature in features:
            t = F.relu(self.conv(feature))
            logits.append(self.cls_logits(t).permute(0, 2, 3, 1).reshape(-1))
            deltas.append(self.bbox_pred(t).permute(0, 2, 3, 1).reshape(-1, 4))
        return torch.cat(logits), torch.cat(deltas)


def box_iou(boxes1, boxes2):
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area1[:, None] + area2 - inter)


random.seed(0)
torch.manual_seed(0)
anchor_generator = AnchorGenerator(sizes=((32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
backbone = TinyFPN()
head = RPNHead(8, anchor_generator.num_anchors_per_location()[0])
optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.01, momentum=0.9)
for i in range(50):
    size = random.randint(160, 280)
    images = torch.rand([1, 3, size, 200])
    targets = [{"boxes": torch.tensor([[10., 20., 30. + size / 4, 40. + size / 4]]), "labels": torch.tensor([1])}]
    features = backbone(images)
    anchors = anchor_generator(ImageList(images, [(size, 200)]), features)[0]
    objectness, pred_bbox_deltas = head(features)
    iou = box_iou(anchors, targets[0]["boxes"]).max(dim=1).values
    labels = (iou >= 0.5).float()
    sampled = (iou >= 0.5) | (iou < 0.3)
    loss_objectness = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
    loss_rpn_box_reg = F.smooth_l1_loss(pred_bbox_deltas[iou >= 0.5], torch.zeros_like(pred_bbox_deltas[iou >= 0.5]),
                                        reduction="sum") / max(1, int(labels.sum()))
    loss = loss_objectness + loss_rpn_box_reg
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"{len(anchor_generator._cache)} anchor layouts cached; loss {loss.item():.4f}")
