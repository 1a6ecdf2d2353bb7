# Source: https://github.com/jacobgil/pytorch-grad-cam/issues/71
# Bug: `ActivationsAndGradients` stores the target layer's output from a forward hook
# (`self.activations.append(output)`) and never clears the lists: "Activations and gradients are
# getting accumulated in cuda device memory" when CAMs are computed image after image, each kept
# activation holding its forward graph. The graph is kept from an inner layer, not the output.
# Fix: store `output.detach()` (and the gradients) and clear the lists at each call.
# Fixed twin: detached activations, lists cleared at each call.
import torch
import torch.nn.functional as F
from torch import nn


class ActivationsAndGradients:
    """Class for extracting activations and registering gradients from a target layer."""

    def __init__(self, model, target_layer):
        self.model = model
        self.gradients = []
        self.activations = []
        target_layer.register_forward_hook(self.save_activation)

    def save_activation(self, module, input, output):
        self.activations.append(output.detach())
        output.register_hook(self.save_gradient)

    def save_gradient(self, grad):
        self.gradients = [grad.cpu()] + self.gradients

    def __call__(self, x):
        self.gradients = []
        self.activations = []
        return self.model(x)


class GradCAM:
    def __init__(self, model, target_layer):
        self.model = model.eval()
        self.activations_and_grads = ActivationsAndGradients(model, target_layer)

    def __call__(self, input_tensor, target_category):
        output = self.activations_and_grads(input_tensor)
        self.model.zero_grad()
        output[0, target_category].backward(retain_graph=True)
        activations = self.activations_and_grads.activations[-1].detach()
        grads = self.activations_and_grads.gradients[-1]
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activations).sum(dim=1))
        return (cam / (cam.max() + 1e-7))[0].numpy()


torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
cam = GradCAM(model=model, target_layer=model[2])
for i in range(40):
    image = torch.rand(1, 3, 32, 32)
    grayscale_cam = cam(input_tensor=image, target_category=i % 10)
print(f"last CAM mean {grayscale_cam.mean():.3f}")
