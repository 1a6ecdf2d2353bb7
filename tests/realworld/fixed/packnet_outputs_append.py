# Source: https://github.com/TRI-ML/packnet-sfm/issues/47 (fixed in pull request #51)
# Bug: the trainer keeps every batch's output dict for `training_epoch_end`, and `output['loss']`
# still carries its graph: memory grows from 21 to 38 GB in one epoch. Fix: detach the loss
# before appending the output (`output['loss'] = output['loss'].detach()`).
# Fixed twin: the loss is detached before the output is kept.
import torch
import torch.nn.functional as F
from torch import nn


class DepthNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.decoder = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, rgb):
        return torch.sigmoid(self.decoder(F.relu(self.encoder(rgb))))


class SelfSupModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.depth_net = DepthNet()

    def training_step(self, batch, *args):
        depth = self.depth_net(batch["rgb"])
        photometric = F.l1_loss(depth * batch["rgb"].mean(1, keepdim=True), batch["target"])
        smoothness = (depth[..., 1:] - depth[..., :-1]).abs().mean()
        loss = photometric + 0.001 * smoothness
        return {"loss": loss, "metrics": {"photometric": photometric.item()}}

    def training_epoch_end(self, output_batch):
        avg = sum(o["loss"].item() for o in output_batch) / len(output_batch)
        return {"avg_train-loss": avg}


class HorovodTrainer:
    def train(self, dataloader, module, optimizer):
        module.train()
        outputs = []
        for i, batch in enumerate(dataloader):
            optimizer.zero_grad()
            output = module.training_step(batch, i)
            output["loss"].backward()
            optimizer.step()
            output["loss"] = output["loss"].detach()
            outputs.append(output)
        return module.training_epoch_end(outputs)


torch.manual_seed(0)
dataloader = ({"rgb": torch.rand(2, 3, 24, 32), "target": torch.rand(2, 1, 24, 32)} for _ in range(40))
model = SelfSupModel()
print(HorovodTrainer().train(dataloader, model, torch.optim.Adam(model.parameters(), lr=1e-3)))
