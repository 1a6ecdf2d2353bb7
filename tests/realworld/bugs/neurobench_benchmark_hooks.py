# Source: https://github.com/NeuroBench/neurobench/issues/184 ("Memory leak when NeuroBenchModel does
# training"; fixed in commit de4ad1930fc705efc4628ad1ac1c57837dbb467d, "update hook additions to
# bugfix memory leak")
# Bug: the MSWC example measures accuracy during pre-training with `Benchmark(TorchModel(model),
# ...).run()`. Each run registers forward hooks on the activation and connection layers of the
# network (`detect_activations_connections`) and never removes them; it only closes the hooks of
# the *new* `TorchModel` wrapper. The stale hooks stay on the shared `nn.Module`, so every later
# training forward appends its activations (graph attached) to lists nothing ever empties, and
# each evaluation adds another set of hooks: memory grows faster and faster.
# Fix: register hooks only when a workload metric needs them, and close them at the end of `run()`.
# Expected finding: retained-graph at the three appends of the hook functions.
import torch
import torch.nn.functional as F
from torch import nn

requires_hooks = ["activation_sparsity", "number_neuron_updates", "synaptic_operations"]


class ActivationHook():
    """ Hook class for an activation layer in a NeuroBenchModel.

    Output of the activation layer in each forward pass will be stored.
    """

    def __init__(self, layer, connection_layer=None, prev_act_layer_hook=None):
        self.activation_outputs = []
        self.activation_inputs = []
        if layer is not None:
            self.hook = layer.register_forward_hook(self.hook_fn)
            self.hook_pre = layer.register_forward_pre_hook(self.pre_hook_fn)
        else:
            self.hook = None
            self.hook_pre = None
        self.layer = layer

    def pre_hook_fn(self, layer, input):
        self.activation_inputs.append(input)  # EXPECT: retained-graph

    def hook_fn(self, layer, input, output):
        self.activation_outputs.append(output)  # EXPECT: retained-graph

    def reset(self):
        self.activation_outputs = []
        self.activation_inputs = []

    def close(self):
        if self.hook:
            self.hook.remove()
        if self.hook_pre:
            self.hook_pre.remove()


class LayerHook():
    def __init__(self, layer) -> None:
        self.layer = layer
        self.inputs = []
        if layer is not None:
            self.hook = layer.register_forward_pre_hook(self.hook_fn)
        else:
            self.hook = None

    def hook_fn(self, module, input):
        self.inputs.append(input)  # EXPECT: retained-graph

    def reset(self):
        self.inputs = []

    def close(self):
        if self.hook:
            self.hook.remove()


class TorchModel:
    """ The TorchModel class wraps an nn.Module (NeuroBenchModel parts included). """

    def __init__(self, net):
        self.activation_modules = [nn.ReLU, nn.Sigmoid, nn.Tanh]
        self.activation_hooks = []
        self.connection_hooks = []
        self.supported_layers = (nn.Linear, nn.Conv2d, nn.Conv1d, nn.Conv3d, nn.RNNBase, nn.RNNCellBase)
        self.net = net
        self.net.eval()

    def __call__(self, batch):
        return self.net(batch)

    def activation_layers(self):
        return [m for m in self.net.modules() if isinstance(m, tuple(self.activation_modules))]

    def connection_layers(self):
        return [m for m in self.net.modules() if len(list(m.children())) == 0 and isinstance(m, self.supported_layers)]

    def reset_hooks(self):
        for hook in self.activation_hooks:
            hook.reset()
        for hook in self.connection_hooks:
            hook.reset()


def detect_activations_connections(model):
    """Register hooks or other operations that should be called before running a benchmark."""
    for hook in model.activation_hooks:
        hook.reset()
        hook.close()
    for hook in model.connection_hooks:
        hook.reset()
        hook.close()
    model.activation_hooks = []
    model.connection_hooks = []
    for layer in model.activation_layers():
        model.activation_hooks.append(ActivationHook(layer))
    for flat_layer in model.connection_layers():
        if isinstance(flat_layer, model.supported_layers):
            model.connection_hooks.append(LayerHook(flat_layer))


def classification_accuracy(model, preds, data):
    return torch.mean(torch.eq(preds, data[1]).float()).item()


class Benchmark():
    def __init__(self, model, dataloader, preprocessors, postprocessors, metric_list):
        self.model = model
        self.dataloader = dataloader
        self.preprocessors = preprocessors
        self.postprocessors = postprocessors
        self.static_metrics = {m: globals()[m] for m in metric_list[0]}
        self.workload_metrics = {m: globals()[m] for m in metric_list[1]}

    def run(self):
        results = {}
        # add hooks to the model
        detect_activations_connections(self.model)

        dataset_len = sum(len(data[1]) for data in self.dataloader)
        for data in self.dataloader:
            batch_size = data[0].size(0)
            for alg in self.preprocessors:
                data = alg(data)
            with torch.no_grad():  # (as later NeuroBench releases do; keeps this twin to the hook bug)
                preds = self.model(data[0])
            for alg in self.postprocessors:
                preds = alg(preds)
            for m in self.workload_metrics.keys():
                v = self.workload_metrics[m](self.model, preds, data)
                results[m] = results.get(m, 0) + v * batch_size / dataset_len
            # delete hook contents
            self.model.reset_hooks()
        return results


class M5(nn.Module):
    def __init__(self, n_input=20, n_output=200, stride=2, n_channel=16, input_kernel=4, pool_kernel=2):
        super().__init__()
        self.conv1 = nn.Conv1d(n_input, n_channel, kernel_size=input_kernel, stride=stride)
        self.bn1 = nn.BatchNorm1d(n_channel)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool1d(pool_kernel)
        self.conv2 = nn.Conv1d(n_channel, n_channel, kernel_size=3)
        self.bn2 = nn.BatchNorm1d(n_channel)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool1d(pool_kernel)
        self.conv3 = nn.Conv1d(n_channel, 2 * n_channel, kernel_size=3)
        self.bn3 = nn.BatchNorm1d(2 * n_channel)
        self.act3 = nn.ReLU()
        self.pool3 = nn.MaxPool1d(pool_kernel)
        self.output = nn.Linear(2 * n_channel, n_output, bias=True)

    def forward(self, x):
        x = self.pool1(self.act1(self.bn1(self.conv1(x))))
        x = self.pool2(self.act2(self.bn2(self.conv2(x))))
        x = self.pool3(self.act3(self.bn3(self.conv3(x))))
        x = F.avg_pool1d(x, x.shape[-1]).permute(0, 2, 1).squeeze()
        return self.output(x)


squeeze = lambda x: (x[0].squeeze(), x[1])
out2pred = lambda x: torch.argmax(x, dim=-1)


def test(test_model, mask, set):
    test_model.eval()
    out_mask = lambda x: x - mask
    benchmark = Benchmark(TorchModel(test_model), metric_list=[[], ["classification_accuracy"]], dataloader=set,
                          preprocessors=[squeeze], postprocessors=[out_mask, out2pred, torch.squeeze])
    pre_train_results = benchmark.run()
    return pre_train_results['classification_accuracy']


torch.manual_seed(0)
make_set = lambda n: [(torch.randn(32, 1, 20, 201), torch.randint(0, 100, (32,))) for _ in range(n)]
base_train_set, base_test_set = make_set(4), make_set(2)
mask = torch.full((200,), float('inf'))
mask[torch.arange(0, 100, dtype=int)] = 0
model = M5()
optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.0001)
for epoch in range(12):
    model.train()
    for data, target in base_train_set:
        output = model(data.squeeze())
        loss = F.cross_entropy(output.squeeze(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if epoch % 3 == 0:
        train_acc = test(model, mask, set=base_train_set)
        test_acc = test(model, mask, set=base_test_set)
print(f"loss {loss.item():.4f}; train accuracy {train_acc * 100:.1f}%, test accuracy {test_acc * 100:.1f}%")
