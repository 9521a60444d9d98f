"""Plausible wrong answers to the capstone tasks (CURRICULUM.md); each must fail with a
teaching message. Derived from the reference with ``variant`` where it is one mistake away."""

from pathlib import Path

from ftlab.course.wrong import WrongAnswer, variant

ROOT = Path(__file__).resolve().parents[2]

WRONG_ANSWERS = [
    WrongAnswer(task="C.1", label="prompt tokens summed in", message_contains=("prompt tokens summed in",),
                code=variant(ROOT, "C.1", "scored = targets != IGNORE_INDEX",
                             "scored = torch.ones_like(targets, dtype=torch.bool)")),
    WrongAnswer(task="C.1", label="labels not shifted", message_contains=("shift by one",),
                code=variant(ROOT, "C.1", "scores = logits[:, :-1].float().log_softmax(dim=-1)\n"
                                          "targets = labels[:, 1:].to(scores.device)",
                             "scores = logits.float().log_softmax(dim=-1)\n"
                             "targets = labels.to(scores.device)")),
    WrongAnswer(task="C.1", label="mean over response tokens instead of the sum",
                message_contains=("not average",),
                code=variant(ROOT, "C.1", "return (picked * scored).sum(dim=-1)",
                             "return (picked * scored).sum(dim=-1) / scored.sum(dim=-1).clamp(min=1)")),
    WrongAnswer(task="C.2", label="sign flipped", message_contains=("sign flipped",),
                code=variant(ROOT, "C.2", "losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))",
                             "losses = -F.logsigmoid(beta * (rejected_ratio - chosen_ratio))")),
    WrongAnswer(task="C.2", label="reference not detached", message_contains=("reference not detached",),
                code=variant(ROOT, "C.2", "chosen_ratio = policy_chosen - reference_chosen.detach()\n"
                                          "rejected_ratio = policy_rejected - reference_rejected.detach()",
                             "chosen_ratio = policy_chosen - reference_chosen\n"
                             "rejected_ratio = policy_rejected - reference_rejected")),
    WrongAnswer(task="C.2", label="reference ignored", message_contains=("reference missing",),
                code=variant(ROOT, "C.2", "losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))",
                             "losses = -F.logsigmoid(beta * (policy_chosen - policy_rejected))")),
    WrongAnswer(task="C.2", label="log of sigmoid underflows", message_contains=("logsigmoid",),
                code=variant(ROOT, "C.2", "losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))",
                             "losses = -torch.log(torch.sigmoid(beta * (chosen_ratio - rejected_ratio)))")),
    WrongAnswer(task="C.3", label="every stage starts from the base model",
                message_contains=("every stage starts from the base model",),
                code=variant(ROOT, "C.3", "result = run(stage, model)", "result = run(stage, start)")),
    WrongAnswer(task="C.3", label="completed stages re-run", message_contains=("completed stages re-run",),
                code=variant(ROOT, "C.3", "if not rerun and previous is not None and "
                                          "previous.fingerprint == stage.fingerprint:",
                             "if False:")),
    WrongAnswer(task="C.3", label="later stages reused after an earlier one re-ran",
                message_contains=("every later stage must run too",),
                code=variant(ROOT, "C.3", "if not rerun and previous is not None",
                             "if previous is not None")),
    WrongAnswer(task="C.3", label="results recorded at the end", message_contains=("not at the end",),
                code='''
                    results: list[StageResult] = []
                    model, rerun, ran = start, False, []
                    for stage in planned:
                        previous = done.get(stage.name)
                        if not rerun and previous is not None and previous.fingerprint == stage.fingerprint:
                            result = previous.result
                        else:
                            rerun = True
                            result = run(stage, model)
                            ran.append((stage, result))
                        results.append(result)
                        model = result.model
                    for stage, result in ran:
                        record(stage, result)
                    return results
                '''),
    WrongAnswer(task="C.4", label="centred over the batch instead of the group",
                message_contains=("centred over the batch instead of the group",),
                code=variant(ROOT, "C.4",
                             "centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)",
                             "centred = (grouped - grouped.mean()).reshape(-1)")),
    WrongAnswer(task="C.4", label="std of a one-sample group divides by zero",
                message_contains=("std of a one-sample group dividing by zero",),
                code=variant(ROOT, "C.4",
                             "if group_size > 1 else torch.zeros_like(rewards))",
                             "if True else torch.zeros_like(rewards))")),
    WrongAnswer(task="C.4", label="population std instead of the unbiased one",
                message_contains=("unbiased (n - 1",),
                code=variant(ROOT, "C.4", "grouped.std(dim=1, keepdim=True)",
                             "grouped.std(dim=1, keepdim=True, correction=0)")),
    WrongAnswer(task="C.5", label="old log-probs not detached",
                message_contains=("old log-probs not detached",),
                code=variant(ROOT, "C.5",
                             "old = logps.detach() if old_logps is None else old_logps.detach()",
                             "old = logps if old_logps is None else old_logps")),
    WrongAnswer(task="C.5", label="padding tokens averaged in",
                message_contains=("padding averaged in",),
                code=variant(ROOT, "C.5", "loss = summed.sum() / mask.sum().clamp(min=1.0)",
                             "loss = summed.sum() / mask.numel()")),
    WrongAnswer(task="C.5", label="KL sign wrong", message_contains=("KL sign or estimator wrong",),
                code=variant(ROOT, "C.5", "delta = ref_logps.detach() - logps",
                             "delta = logps - ref_logps.detach()")),
    WrongAnswer(task="C.5", label="KL estimator k1 instead of k3",
                message_contains=("KL sign or estimator wrong",),
                code=variant(ROOT, "C.5", "kl = torch.exp(delta) - delta - 1", "kl = -delta")),
    WrongAnswer(task="C.5", label="clip applied on both sides whatever the advantage's sign",
                message_contains=("clip on the wrong side for negative advantages",),
                code=variant(ROOT, "C.5",
                             "per_token = -torch.min(ratio * gain,\n"
                             "                       torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * gain)",
                             "per_token = -torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * gain")),
]
