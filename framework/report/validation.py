"""The report's section on evaluation during training (evaluation.during_training): for each job whose model was
scored on the validation split while it trained, the test accuracy of the last model and of the checkpoint that
scored best on validation, with their steps. The checkpoint is chosen on validation problems only, so its test
accuracy is not selected on the test prompts."""
from __future__ import annotations

COLUMNS = ("method", "decoder", "seed", "last: test % (step)", "best on validation: test % (step)",
           "validation % last → best")


def best_on_validation_lines(runs) -> list[str]:
    """Markdown lines of the section (a heading, a table, a note), or none when no job recorded a best checkpoint."""
    rows = []
    for run in runs:
        result, best = run.result, run.result.best_on_validation
        if not best:
            continue
        rows.append([run.method_label, result.decoder_label, str(result.seed),
                     f"{100 * result.metrics['accuracy']:.1f} ({best['last_step']})",
                     f"{100 * best['metrics']['accuracy']:.1f} ({best['step']})",
                     f"{100 * best['last_validation_accuracy']:.1f} → {100 * best['validation_accuracy']:.1f}"])
    if not rows:
        return []
    return ["### Last and best-on-validation checkpoints", "",
            "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
            *("| " + " | ".join(row) + " |" for row in rows), "",
            "Test accuracy of the model after its last optimizer step (the tables above) and of the checkpoint of the "
            "same training that scored best on the validation split (greedy, `evaluation.during_training`; the "
            "earliest of equal scores), each with its optimizer step; the last column: validation accuracy at the "
            "last step and at the best one. The choice never sees a test prompt.", ""]
