# Source: https://github.com/christiansafka/img2vec/pull/33 ("use torch no grad to reduce memory usage")
# Bug: `Img2Vec.get_vec()` extracts an embedding from a pretrained ResNet with a forward hook on its
# avgpool layer. The model was only put in `eval()` mode, its parameters still require grad, and
# `h_x = self.model(image)` runs with grad mode on: every call records the whole backbone's graph
# (activations included) although only the hooked `o.data` copy is kept and nothing back-propagates.
# Fix: `with torch.no_grad(): h_x = self.model(image)`.
# Fixed twin: the extraction forward runs under no_grad.
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """A small stand-in for torchvision's resnet18 (same module names: layer1..4, avgpool, fc)."""

    def __init__(self, num_classes=10, width=16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, width * 2, 2)
        self.layer3 = BasicBlock(width * 2, width * 4, 2)
        self.layer4 = BasicBlock(width * 4, width * 8, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(pretrained=True):
    return PRETRAINED


class Img2Vec():
    def __init__(self, cuda=False, model='resnet-18', layer='default', layer_output_size=512):
        """ Img2Vec
        :param cuda: If set to True, will run forward pass on GPU
        :param model: String name of requested model
        :param layer: String or Int depending on model.
        :param layer_output_size: Int depicting the output size of the requested layer
        """
        self.device = torch.device("cuda" if cuda else "cpu")
        self.layer_output_size = layer_output_size
        self.model_name = model

        self.model, self.extraction_layer = self._get_model_and_layer(model, layer)

        self.model = self.model.to(self.device)

        self.model.eval()

        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def scaler(self, img):
        return F.interpolate(img.unsqueeze(0), size=(48, 48), mode="bilinear", align_corners=False)[0]

    def normalize(self, img):
        return (img - self.mean) / self.std

    def get_vec(self, img, tensor=False):
        """ Get vector embedding from an image tensor (C, H, W)
        :param tensor: If True, get_vec will return a FloatTensor instead of Numpy array
        """
        image = self.normalize(self.scaler(img)).unsqueeze(0).to(self.device)

        my_embedding = torch.zeros(1, self.layer_output_size, 1, 1)

        def copy_data(m, i, o):
            my_embedding.copy_(o.data)

        h = self.extraction_layer.register_forward_hook(copy_data)
        with torch.no_grad():
            h_x = self.model(image)
        h.remove()

        if tensor:
            return my_embedding
        else:
            return my_embedding.numpy()[0, :, 0, 0]

    def _get_model_and_layer(self, model_name, layer):
        if model_name == 'resnet-18':
            model = resnet18(pretrained=True)
            if layer == 'default':
                layer = model._modules.get('avgpool')
                self.layer_output_size = 128
            else:
                layer = model._modules.get(layer)
            return model, layer
        raise KeyError('Model %s was not found' % model_name)


def make_images(n, num_classes=10):
    labels = torch.randint(0, num_classes, (n,))
    images = torch.rand(n, 3, 32, 32) * 0.5
    for i, label in enumerate(labels):
        images[i, label % 3, :, :] += 0.1 * (label // 3).float()
    return images, labels


torch.manual_seed(0)
# "pretraining" of the backbone (stands in for the downloaded ImageNet weights)
PRETRAINED = ResNet()
optimizer = torch.optim.SGD(PRETRAINED.parameters(), lr=0.05, momentum=0.9)
for step in range(10):
    images, labels = make_images(16)
    loss = F.cross_entropy(PRETRAINED(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

# feature extraction, one image at a time, then a linear classifier on the vectors
img2vec = Img2Vec(model='resnet-18')
images, labels = make_images(60)
vectors = torch.stack([img2vec.get_vec(img, tensor=True).flatten() for img in images])
clf = nn.Linear(vectors.size(1), 10)
clf_optimizer = torch.optim.Adam(clf.parameters(), lr=0.01)
for epoch in range(50):
    clf_loss = F.cross_entropy(clf(vectors), labels)
    clf_optimizer.zero_grad()
    clf_loss.backward()
    clf_optimizer.step()
print(f"backbone loss {loss.item():.3f}; {len(vectors)} vectors of size {vectors.size(1)}; "
      f"classifier loss {clf_loss.item():.3f}")
