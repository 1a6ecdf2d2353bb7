# Source: https://github.com/RUCAIBox/RecBole/pull/307 ("FIX: bug of storing loss in each batch cause out of
# memory in Trainer")
# Bug: RecBole's `Trainer._train_epoch` keeps every batch's `losses` in `losses_list` and sums the
# list at the end of the epoch for the log. Knowledge-aware models such as CKE return a tuple of
# loss tensors (rec, kg, reg), each carrying its graph, so a whole epoch of graphs (embedding
# lookups, per-relation projections) stays alive until the epoch ends: "out of memory".
# Fix (the PR): accumulate `per_loss.item()` floats in `total_loss` instead of keeping the tensors.
# Fixed twin: the PR's `_train_epoch`, summing `.item()` floats.
import random
from logging import getLogger
from time import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim


class Interaction(object):
    def __init__(self, interaction):
        self.interaction = interaction

    def __getitem__(self, index):
        return self.interaction[index]

    def to(self, device):
        return Interaction({k: v.to(device) for k, v in self.interaction.items()})


class BPRLoss(nn.Module):
    def __init__(self, gamma=1e-10):
        super().__init__()
        self.gamma = gamma

    def forward(self, pos_score, neg_score):
        return -torch.log(self.gamma + torch.sigmoid(pos_score - neg_score)).mean()


class EmbLoss(nn.Module):
    def forward(self, *embeddings):
        emb_loss = torch.zeros(1)
        for embedding in embeddings:
            emb_loss = emb_loss + torch.norm(embedding, p=2)
        return emb_loss / embeddings[-1].shape[0]


class CKE(nn.Module):
    USER_ID, ITEM_ID, NEG_ITEM_ID = "user_id", "item_id", "neg_item_id"
    HEAD_ENTITY_ID, RELATION_ID, TAIL_ENTITY_ID, NEG_TAIL_ENTITY_ID = "head_id", "relation_id", "tail_id", "neg_tail_id"

    def __init__(self, config, n_users, n_items, n_entities, n_relations):
        super().__init__()
        self.n_items = n_items
        self.embedding_size = config["embedding_size"]
        self.kg_embedding_size = config["kg_embedding_size"]
        self.reg_weights = config["reg_weights"]
        self.user_embedding = nn.Embedding(n_users, self.embedding_size)
        self.item_embedding = nn.Embedding(n_items, self.embedding_size)
        self.entity_embedding = nn.Embedding(n_entities, self.embedding_size)
        self.relation_embedding = nn.Embedding(n_relations, self.kg_embedding_size)
        self.trans_w = nn.Embedding(n_relations, self.embedding_size * self.kg_embedding_size)
        self.rec_loss = BPRLoss()
        self.kg_loss = BPRLoss()
        self.reg_loss = EmbLoss()
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.xavier_normal_(module.weight)

    def get_kg_embedding(self, h, r, pos_t, neg_t):
        h_e = self.entity_embedding(h).unsqueeze(1)
        pos_t_e = self.entity_embedding(pos_t).unsqueeze(1)
        neg_t_e = self.entity_embedding(neg_t).unsqueeze(1)
        r_e = self.relation_embedding(r)
        r_trans_w = self.trans_w(r).view(r.size(0), self.embedding_size, self.kg_embedding_size)
        h_e = torch.bmm(h_e, r_trans_w).squeeze()
        pos_t_e = torch.bmm(pos_t_e, r_trans_w).squeeze()
        neg_t_e = torch.bmm(neg_t_e, r_trans_w).squeeze()
        r_e = F.normalize(r_e, p=2, dim=1)
        h_e = F.normalize(h_e, p=2, dim=1)
        pos_t_e = F.normalize(pos_t_e, p=2, dim=1)
        neg_t_e = F.normalize(neg_t_e, p=2, dim=1)
        return h_e, r_e, pos_t_e, neg_t_e, r_trans_w

    def get_rec_loss(self, user_e, pos_e, neg_e):
        pos_score = torch.mul(user_e, pos_e).sum(dim=1)
        neg_score = torch.mul(user_e, neg_e).sum(dim=1)
        return self.rec_loss(pos_score, neg_score)

    def get_kg_loss(self, h_e, r_e, pos_e, neg_e):
        pos_tail_score = ((h_e + r_e - pos_e) ** 2).sum(dim=1)
        neg_tail_score = ((h_e + r_e - neg_e) ** 2).sum(dim=1)
        return self.kg_loss(neg_tail_score, pos_tail_score)

    def calculate_loss(self, interaction):
        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]
        h = interaction[self.HEAD_ENTITY_ID]
        r = interaction[self.RELATION_ID]
        pos_t = interaction[self.TAIL_ENTITY_ID]
        neg_t = interaction[self.NEG_TAIL_ENTITY_ID]

        user_e = self.user_embedding(user)
        pos_item_final_e = self.item_embedding(pos_item) + self.entity_embedding(pos_item)
        neg_item_final_e = self.item_embedding(neg_item) + self.entity_embedding(neg_item)
        rec_loss = self.get_rec_loss(user_e, pos_item_final_e, neg_item_final_e)

        h_e, r_e, pos_t_e, neg_t_e, r_trans_w = self.get_kg_embedding(h, r, pos_t, neg_t)
        kg_loss = self.get_kg_loss(h_e, r_e, pos_t_e, neg_t_e)

        reg_loss = self.reg_weights[0] * self.reg_loss(user_e, pos_item_final_e, neg_item_final_e) + \
            self.reg_weights[1] * self.reg_loss(h_e, r_e, pos_t_e, neg_t_e)
        return rec_loss, kg_loss, reg_loss

    def full_sort_predict(self, interaction):
        user_e = self.user_embedding(interaction[self.USER_ID])
        all_item_e = self.item_embedding.weight + self.entity_embedding.weight[:self.n_items]
        return torch.matmul(user_e, all_item_e.transpose(0, 1))


class Trainer(object):
    def __init__(self, config, model):
        self.config = config
        self.model = model
        self.logger = getLogger()
        self.learning_rate = config["learning_rate"]
        self.epochs = config["epochs"]
        self.device = config["device"]
        self.start_epoch = 0
        self.train_loss_dict = dict()
        self.optimizer = optim.Adam(self.model.parameters(), lr=self.learning_rate)

    def _train_epoch(self, train_data, epoch_idx):
        self.model.train()
        total_loss = None
        for batch_idx, interaction in enumerate(train_data):
            interaction = interaction.to(self.device)
            self.optimizer.zero_grad()
            losses = self.model.calculate_loss(interaction)
            if isinstance(losses, tuple):
                loss = sum(losses)
                loss_tuple = tuple(per_loss.item() for per_loss in losses)
                total_loss = loss_tuple if total_loss is None else tuple(map(sum, zip(total_loss, loss_tuple)))
            else:
                loss = losses
                total_loss = losses.item() if total_loss is None else total_loss + losses.item()
            self._check_nan(loss)
            loss.backward()
            self.optimizer.step()
        return total_loss

    def _check_nan(self, loss):
        if torch.isnan(loss):
            raise ValueError("Training loss is nan")

    def generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        train_loss_output = "epoch %d training [time: %.2fs, " % (epoch_idx, e_time - s_time)
        if isinstance(losses, tuple):
            for idx, loss in enumerate(losses):
                train_loss_output += "train_loss%d: %.4f, " % (idx + 1, loss)
            train_loss_output = train_loss_output[:-2]
        else:
            train_loss_output += "train loss: %.4f" % losses
        return train_loss_output + "]"

    @torch.no_grad()
    def evaluate(self, eval_data, k=10):
        self.model.eval()
        hits, total = 0, 0
        for users, pos_items in eval_data:
            scores = self.model.full_sort_predict({CKE.USER_ID: users})
            topk = scores.topk(k, dim=1).indices
            hits += (topk == pos_items[:, None]).any(1).sum().item()
            total += len(users)
        return {"hit@%d" % k: hits / total}

    def fit(self, train_data, valid_data=None, verbose=True):
        for epoch_idx in range(self.start_epoch, self.epochs):
            training_start_time = time()
            train_loss = self._train_epoch(train_data, epoch_idx)
            self.train_loss_dict[epoch_idx] = sum(train_loss) if isinstance(train_loss, tuple) else train_loss
            training_end_time = time()
            if verbose:
                print(self.generate_train_loss_output(epoch_idx, training_start_time, training_end_time, train_loss))
            if valid_data:
                print("epoch %d evaluating: %s" % (epoch_idx, self.evaluate(valid_data)))


def knowledge_data_loader(n_users, n_items, n_entities, n_relations, n_inter, batch_size, seed):
    """RSKG state of RecBole's knowledge-based loader: every batch holds user-item pairs and KG triples."""
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, n_users, (n_inter,), generator=g)
    items = (users * 7 + torch.randint(0, 5, (n_inter,), generator=g)) % n_items
    heads = torch.randint(0, n_entities, (n_inter,), generator=g)
    relations = torch.randint(0, n_relations, (n_inter,), generator=g)
    tails = (heads + relations * 11) % n_entities
    batches = []
    for start in range(0, n_inter, batch_size):
        sl = slice(start, start + batch_size)
        m = len(users[sl])
        batches.append(Interaction({
            CKE.USER_ID: users[sl], CKE.ITEM_ID: items[sl],
            CKE.NEG_ITEM_ID: torch.randint(0, n_items, (m,), generator=g),
            CKE.HEAD_ENTITY_ID: heads[sl], CKE.RELATION_ID: relations[sl], CKE.TAIL_ENTITY_ID: tails[sl],
            CKE.NEG_TAIL_ENTITY_ID: torch.randint(0, n_entities, (m,), generator=g),
        }))
    valid_users = torch.arange(n_users)
    valid = [(valid_users[i:i + 100], (valid_users[i:i + 100] * 7 + 2) % n_items) for i in range(0, n_users, 100)]
    return batches, valid


torch.manual_seed(2020)
random.seed(2020)
config = {"embedding_size": 32, "kg_embedding_size": 32, "reg_weights": [1e-2, 1e-2], "learning_rate": 1e-3,
          "epochs": 3, "device": torch.device("cpu")}
n_users, n_items, n_entities, n_relations = 300, 400, 600, 6
train_data, valid_data = knowledge_data_loader(n_users, n_items, n_entities, n_relations, 3072, 256, seed=1)
model = CKE(config, n_users, n_items, n_entities, n_relations)
Trainer(config, model).fit(train_data, valid_data)
