# Source: https://github.com/microsoft/InnerEye-DeepLearning/pull/209 ("Do not persist model outputs
# across epochs": "this can lead out of memory issues")
# Bug: `train_or_validate_epoch` returns a `ModelOutputsAndMetricsForEpoch` that holds the outputs
# of every minibatch of the epoch (for a segmentation model: the posteriors and segmentations of
# each batch, as arrays sharing the tensors' memory). `model_train` appends these whole results to
# `train_results_per_epoch` / `val_results_per_epoch`, so the outputs of every epoch stay alive
# until training ends and memory grows epoch after epoch.
# Fix: keep only the epoch's metrics (`train_epoch_results.metrics`) in the per-epoch lists.
# Expected finding: memory-growth at the two appends to the per-epoch result lists.
from dataclasses import dataclass
from typing import Dict, List, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MetricsDict = Dict[str, float]


@dataclass
class ModelForwardAndBackwardsOutputs:
    """
    Dataclass to store results from a single model forward and backwards pass.
    """
    loss: float
    logits: Union[torch.Tensor, np.ndarray]
    labels: Union[torch.Tensor, np.ndarray]


@dataclass
class ModelOutputsAndMetricsForEpoch:
    """
    Dataclass to store results from a single epoch.
    """
    metrics: MetricsDict
    model_outputs: List[ModelForwardAndBackwardsOutputs]
    is_train: bool


@dataclass
class SegmentationForwardPassResult:
    posteriors: np.ndarray  # posteriors for each patch in shape: Batches x Classes x Z x Y x X
    segmentations: np.ndarray
    loss: float


class SegmentationForwardPass:
    def __init__(self, model, optimizer, in_training_mode):
        self.model, self.optimizer, self.in_training_mode = model, optimizer, in_training_mode

    def forward_pass_patches(self, patches, labels):
        if self.in_training_mode:
            self.model.train()
            logits = self.model(patches)
            loss = F.cross_entropy(logits, labels.argmax(dim=1))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        else:
            self.model.eval()
            with torch.no_grad():
                logits = self.model(patches)
                loss = F.cross_entropy(logits, labels.argmax(dim=1))
        posteriors = torch.nn.functional.softmax(logits, dim=1)
        # post process posteriors to compute result
        segmentations = posteriors.argmax(dim=1).data.cpu().numpy()
        posteriors = posteriors.data.cpu().numpy()
        return SegmentationForwardPassResult(posteriors=posteriors, segmentations=segmentations, loss=loss.item())


class ModelTrainingStepsForSegmentation:
    def __init__(self, model, optimizer, in_training_mode):
        self.pipeline = SegmentationForwardPass(model, optimizer, in_training_mode)
        self.losses = []

    def forward_and_backward_minibatch(self, sample, batch_index, epoch):
        forward_pass_result = self.pipeline.forward_pass_patches(patches=sample["image"], labels=sample["labels"])
        self.losses.append(forward_pass_result.loss)
        return ModelForwardAndBackwardsOutputs(
            loss=forward_pass_result.loss,
            logits=forward_pass_result.posteriors,
            labels=forward_pass_result.segmentations
        )

    def get_epoch_results_and_store(self):
        return {"Loss": float(np.mean(self.losses))}


def train_or_validate_epoch(training_steps, data_loader, epoch) -> ModelOutputsAndMetricsForEpoch:
    """
    Trains or validates the model for one epoch.
    """
    model_outputs_epoch = []
    for batch_index, sample in enumerate(data_loader):
        model_outputs_minibatch = training_steps.forward_and_backward_minibatch(sample, batch_index, epoch)
        model_outputs_epoch.append(model_outputs_minibatch)
    return ModelOutputsAndMetricsForEpoch(
        metrics=training_steps.get_epoch_results_and_store(),
        model_outputs=model_outputs_epoch,
        is_train=training_steps.pipeline.in_training_mode
    )


def make_loader(num_batches, generator, batch_size=4, classes=4, shape=(16, 24, 24)):
    batches = []
    for _ in range(num_batches):
        image = torch.rand(batch_size, 1, *shape, generator=generator)
        target = (image * classes).long().clamp(max=classes - 1).squeeze(1)
        batches.append({"image": image, "labels": F.one_hot(target, classes).permute(0, 4, 1, 2, 3).float()})
    return batches


def model_train(model, optimizer, data_loaders, num_epochs):
    train_results_per_epoch, val_results_per_epoch = [], []
    for epoch in range(num_epochs):
        training_steps = ModelTrainingStepsForSegmentation(model, optimizer, in_training_mode=True)
        train_epoch_results = train_or_validate_epoch(training_steps, data_loaders["train"], epoch)
        train_results_per_epoch.append(train_epoch_results)  # EXPECT: memory-growth

        # Run without adjusting weights on the validation set
        training_steps = ModelTrainingStepsForSegmentation(model, optimizer, in_training_mode=False)
        val_epoch_results = train_or_validate_epoch(training_steps, data_loaders["val"], epoch)
        val_results_per_epoch.append(val_epoch_results)  # EXPECT: memory-growth
    return train_results_per_epoch, val_results_per_epoch


torch.manual_seed(0)
model = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(),
                      nn.Conv3d(8, 4, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
generator = torch.Generator().manual_seed(0)
data_loaders = {"train": make_loader(6, generator), "val": make_loader(2, generator)}
train_results, val_results = model_train(model, optimizer, data_loaders, num_epochs=8)
print(f"train loss {train_results[-1].metrics['Loss']:.4f}, val loss {val_results[-1].metrics['Loss']:.4f}")
