# Source: https://github.com/open-edge-platform/anomalib/issues/457 ("question about
# AdaptiveThreshold, possible bug?"; fixed by pull requests #488 and #527, "Reset adaptive threshold
# between epochs")
# Bug: at the end of every validation epoch the `AnomalyModule` feeds all validation outputs to
# its image and pixel `AdaptiveThreshold` metrics, which wrap a `PrecisionRecallCurve` whose list
# states keep every score ever given. Nothing resets them, so "after every validation step new
# data is added to it, old data is never deleted": each epoch adds the full-resolution anomaly maps
# and masks of the whole validation set, and memory grows until the process is killed.
# Fix: `AdaptiveThreshold.reset()` resets the wrapped curve, and the module resets both thresholds
# before collecting the outputs of the epoch.
# Fixed twin: both thresholds are reset before the outputs of each epoch are collected.
from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn


class Metric(nn.Module):
    """The part of `torchmetrics.Metric` used here: list/tensor states, update, compute, reset."""

    def __init__(self, **kwargs):
        super().__init__()
        self._defaults = {}

    def add_state(self, name, default, persistent=False):
        setattr(self, name, default)
        self._defaults[name] = deepcopy(default)

    def reset(self):
        for attr, default in self._defaults.items():
            setattr(self, attr, deepcopy(default))


def _binary_clf_curve(preds, target):
    desc_score_indices = torch.argsort(preds, descending=True)
    preds, target = preds[desc_score_indices], target[desc_score_indices]
    distinct_value_indices = torch.where(preds[1:] - preds[:-1])[0]
    threshold_idxs = F.pad(distinct_value_indices, [0, 1], value=target.size(0) - 1)
    tps = torch.cumsum(target, dim=0)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    return fps, tps, preds[threshold_idxs]


class PrecisionRecallCurve(Metric):
    def __init__(self, num_classes=1, pos_label=1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.pos_label = num_classes, pos_label
        self.add_state("preds", default=[])
        self.add_state("target", default=[])

    def update(self, preds, target):
        self.preds.append(preds.flatten())
        self.target.append(target.flatten())

    def compute(self):
        preds, target = torch.cat(self.preds), torch.cat(self.target)
        fps, tps, thresholds = _binary_clf_curve(preds, target)
        precision = tps / (tps + fps)
        recall = tps / tps[-1]
        last_ind = torch.where(tps == tps[-1])[0][0]
        sl = slice(0, last_ind.item() + 1)
        precision = torch.cat([precision[sl].flip(0), torch.ones(1)])
        recall = torch.cat([recall[sl].flip(0), torch.zeros(1)])
        return precision, recall, thresholds[sl].flip(0)


class AdaptiveThreshold(Metric):
    """Optimal F1 Metric.

    Compute the optimal F1 score at the adaptive threshold, based on the F1 metric of the true labels and the
    predicted anomaly scores.
    """

    def __init__(self, default_value: float = 0.5, **kwargs):
        super().__init__(**kwargs)

        self.precision_recall_curve = PrecisionRecallCurve(num_classes=1)
        self.add_state("value", default=torch.tensor(default_value), persistent=True)
        self.value = torch.tensor(default_value)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Update the precision-recall curve metric."""
        self.precision_recall_curve.update(preds, target)

    def compute(self) -> torch.Tensor:
        precision, recall, thresholds = self.precision_recall_curve.compute()
        f1_score = (2 * precision * recall) / (precision + recall + 1e-10)
        if thresholds.dim() == 0:
            # special case where recall is 1.0 even for the highest threshold.
            self.value = thresholds
        else:
            self.value = thresholds[torch.argmax(f1_score)]
        return self.value

    def reset(self) -> None:
        """Reset the metric."""
        self.precision_recall_curve.reset()


class FeatureExtractor(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x):
        f1 = self.layer1(x)
        return [f1, self.layer2(f1)]


class StfpmModel(nn.Module):
    """Student-teacher feature pyramid matching, as anomalib's STFPM (teacher frozen)."""

    def __init__(self, input_size=(64, 64)):
        super().__init__()
        self.input_size = input_size
        self.teacher_model, self.student_model = FeatureExtractor(), FeatureExtractor()
        for parameters in self.teacher_model.parameters():
            parameters.requires_grad = False

    def forward(self, images):
        teacher_features = self.teacher_model(images)
        student_features = self.student_model(images)
        if self.training:
            return teacher_features, student_features
        anomaly_map = torch.ones(images.shape[0], 1, *self.input_size)
        for t, s in zip(teacher_features, student_features):
            distance = 0.5 * (F.normalize(t, dim=1) - F.normalize(s, dim=1)).pow(2).sum(1, keepdim=True)
            anomaly_map = anomaly_map * F.interpolate(distance, size=self.input_size, mode="bilinear",
                                                      align_corners=False)
        return anomaly_map


def stfpm_loss(teacher_features, student_features):
    return sum(F.mse_loss(F.normalize(s, dim=1), F.normalize(t, dim=1)) * s.shape[-1] * s.shape[-2] / 2
               for t, s in zip(teacher_features, student_features))


class Stfpm(nn.Module):
    """The `AnomalyModule` (LightningModule) parts that matter: thresholds computed every epoch."""

    def __init__(self):
        super().__init__()
        self.model = StfpmModel()
        self.image_threshold = AdaptiveThreshold().cpu()
        self.pixel_threshold = AdaptiveThreshold().cpu()
        self.adaptive_threshold = True

    def training_step(self, batch):
        self.model.teacher_model.eval()
        teacher_features, student_features = self.model.forward(batch["image"])
        return {"loss": stfpm_loss(teacher_features, student_features)}

    def validation_step(self, batch):
        batch["anomaly_maps"] = self.model(batch["image"])
        return batch

    def validation_step_end(self, val_step_outputs):
        self._outputs_to_cpu(val_step_outputs)
        self._post_process(val_step_outputs)
        return val_step_outputs

    def validation_epoch_end(self, outputs):
        if self.adaptive_threshold:
            self._compute_adaptive_threshold(outputs)

    def _compute_adaptive_threshold(self, outputs):
        self.image_threshold.reset()
        self.pixel_threshold.reset()
        self._collect_outputs(self.image_threshold, self.pixel_threshold, outputs)
        self.image_threshold.compute()
        if "mask" in outputs[0].keys() and "anomaly_maps" in outputs[0].keys():
            self.pixel_threshold.compute()
        else:
            self.pixel_threshold.value = self.image_threshold.value

    def _collect_outputs(self, image_metric, pixel_metric, outputs):
        for output in outputs:
            image_metric.cpu()
            image_metric.update(output["pred_scores"], output["label"].int())
            if "mask" in output.keys() and "anomaly_maps" in output.keys():
                pixel_metric.cpu()
                pixel_metric.update(output["anomaly_maps"], output["mask"].int())

    def _post_process(self, outputs):
        if "pred_scores" not in outputs and "anomaly_maps" in outputs:
            outputs["pred_scores"] = (
                outputs["anomaly_maps"].reshape(outputs["anomaly_maps"].shape[0], -1).max(dim=1).values
            )

    def _outputs_to_cpu(self, output):
        for key, value in output.items():
            if isinstance(value, torch.Tensor):
                output[key] = value.cpu()


def validation_batch(generator):
    image = torch.rand(8, 3, 64, 64, generator=generator)
    mask = torch.zeros(8, 1, 64, 64)
    label = torch.zeros(8)
    for i in range(0, 8, 2):  # every other image gets a synthetic defect
        y, x = torch.randint(0, 48, (2,), generator=generator).tolist()
        image[i, :, y:y + 16, x:x + 16] = 1.0
        mask[i, :, y:y + 16, x:x + 16] = 1
        label[i] = 1
    return {"image": image, "mask": mask, "label": label}


torch.manual_seed(0)
module = Stfpm()
optimizer = torch.optim.SGD(module.model.student_model.parameters(), lr=0.4, momentum=0.9)
val_generator = torch.Generator().manual_seed(1)
val_set = [validation_batch(val_generator) for _ in range(2)]
for epoch in range(16):
    module.train()
    for step in range(3):
        loss = module.training_step({"image": torch.rand(16, 3, 64, 64)})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    with torch.no_grad():
        outputs = [module.validation_step_end(module.validation_step(dict(batch))) for batch in val_set]
    module.validation_epoch_end(outputs)
print(f"loss {loss.item():.4f}; image threshold {module.image_threshold.value.item():.4f}, "
      f"pixel threshold {module.pixel_threshold.value.item():.4f}")
