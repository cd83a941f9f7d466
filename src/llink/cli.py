"""The ``llink`` command line: one entry point, subcommands per stage.

Settings come from dataclass defaults (the offline default), an optional
``--config FILE`` and ``key=value`` overrides, e.g.
``llink train stage-a stage_a.steps=2000 run_dir=runs/try``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from llink.config import DEFAULT_LITERAL_BIAS, MAX_GATE_BOOST, Config, ConfigError, load_config
from llink.data.harvest import SOURCES as HARVEST_SOURCES
from llink.data.pairs import PairFileError
from llink.storage.checkpoints import CheckpointError

EPILOG = """\
settings: every command that takes --config also takes KEY=VALUE overrides, with
dotted keys into the config sections (model, data, stage_a, stage_b, eval, compute) and
top-level keys (run_dir, device, seed, features_cache). `llink config show` prints them all.
Example: llink train stage-a --config configs/offline.yaml stage_a.steps=2000
"""


def _int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``lo`` (a bad value exits 2 with a usage line)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use an integer >= {lo}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


_positive_int = _int_at_least(1)
_count = _int_at_least(0)


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is out of range: use a port in [0, 65535]")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range: use a finite number > 0")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range: use a finite number >= 0")
    return value


def _gate_boost(text: str) -> float:
    """``--gate-boost``: the bounds the server applies to ``llink.gate_boost``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not 0.0 <= value <= MAX_GATE_BOOST:
        raise argparse.ArgumentTypeError(
            f"{text} is out of range: use a number in [0, {MAX_GATE_BOOST:g}] (1 = as trained)"
        )
    return value


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML/TOML/JSON config (default: offline)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. stage_a.steps=2000 run_dir=runs/x")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def _session(args: argparse.Namespace):
    from llink.workflows import Session

    return Session(_config(args), progress=not args.quiet)


def cmd_run(args: argparse.Namespace) -> None:
    from llink.workflows import run_main

    run_main(_session(args), resume=args.resume)


def cmd_config_show(args: argparse.Namespace) -> None:
    print(json.dumps(_config(args).to_dict(), indent=2))


def cmd_data_harvest(args: argparse.Namespace) -> None:
    from llink.data.harvest import (
        HarvestError,
        harvest,
        harvest_many,
        output_paths,
        parse_languages,
        summary_table,
    )

    try:
        langs = parse_languages(args.lang)
        outs = output_paths(langs, Path(args.out) if args.out else None, args.out_dir)
    except ValueError as exc:
        raise HarvestError(str(exc)) from None
    if len(langs) == 1 and args.out_dir is None:  # one corpus: its counts, as before
        out = outs[langs[0]]
        counts = harvest(langs[0], out, sources=tuple(args.sources), workdir=args.workdir,
                         keep_workdir=args.keep_workdir, provenance=True,
                         max_bytes=args.max_bytes)
        print(json.dumps(counts, indent=2))
        print(f"written: {out}")
        return
    all_counts = harvest_many(outs, sources=tuple(args.sources), workdir=args.workdir,
                              keep_workdir=args.keep_workdir, provenance=True,
                              max_bytes=args.max_bytes)
    print(json.dumps(all_counts, indent=2))
    print(summary_table(all_counts))
    for out in outs.values():
        print(f"written: {out}")


def cmd_data_split(args: argparse.Namespace) -> None:
    from llink.data.splits import load_splits

    splits = load_splits(_config(args).data)
    print(splits.summary())


def cmd_models_prepare(args: argparse.Namespace) -> None:
    from llink.backbones.offline import resolve_model

    cfg = _config(args)
    for role, name in (("encoder", cfg.model.encoder), ("decoder", cfg.model.decoder)):
        print(f"{role}: {name} -> {resolve_model(name, cfg.model.cache_dir)}")


def cmd_train_stage_a(args: argparse.Namespace) -> None:
    from llink.workflows import run_stage_a

    run_stage_a(_session(args), resume=args.resume)


def cmd_train_stage_b(args: argparse.Namespace) -> None:
    from llink.workflows import run_stage_b

    run_stage_b(_session(args), resume=args.resume)


def cmd_train_baseline(args: argparse.Namespace) -> None:
    from llink.workflows import run_baseline

    run_baseline(_session(args), resume=args.resume)


def cmd_eval_gen(args: argparse.Namespace) -> None:
    from llink.workflows import evaluate_generation

    session = _session(args)
    e = session.cfg.eval
    systems = [s.strip() for s in args.systems.split(",") if s.strip()] if args.systems \
        else e.gen_systems
    evaluate_generation(session, systems, n=args.n if args.n is not None else e.gen_n,
                        max_new_tokens=args.max_new_tokens or e.max_new_tokens,
                        batch_size=args.batch_size or e.batch_size, model_dir=args.model,
                        baseline_dir=args.baseline, pairs_file=args.pairs,
                        numbers_only=args.numbers, strict=args.strict,
                        literal_bias=e.literal_bias if args.literal_bias is None
                        else args.literal_bias)


def cmd_eval_judge(args: argparse.Namespace) -> None:
    from llink.workflows import evaluate_judge

    evaluate_judge(_session(args), args.a, args.b, judge=args.judge, judge_url=args.judge_url,
                   judge_model=args.judge_model, api_key_env=args.api_key_env, n=args.n,
                   batch_size=args.batch_size)


def cmd_eval_tokens(args: argparse.Namespace) -> None:
    from llink.workflows import evaluate_tokens

    evaluate_tokens(_session(args), n=args.n)


def cmd_eval_numbers(args: argparse.Namespace) -> None:
    from llink.workflows import evaluate_numbers

    systems = [s.strip() for s in args.systems.split(",") if s.strip()] if args.systems else None
    evaluate_numbers(_session(args), systems)


def cmd_eval_nll(args: argparse.Namespace) -> None:
    from llink.workflows import evaluate_nll_on_test

    session = _session(args)
    limit = args.limit if args.limit is not None else session.cfg.eval.nll_n
    evaluate_nll_on_test(session, model_dir=args.model, limit=limit, pairs_file=args.pairs)


def cmd_data_tasks(args: argparse.Namespace) -> None:
    from llink.data.tasks import write_task_file
    from llink.workflows import stage_b_items

    session = _session(args)
    items = stage_b_items(session, args.split)
    n = write_task_file(args.out, items)
    print(f"written: {args.out} ({n} examples from the {args.split} split)")


def cmd_data_synth(args: argparse.Namespace) -> None:
    from llink.data import synth

    session = _session(args)
    pairs = getattr(session.splits, args.split)
    teacher = synth.make_teacher(
        args.teacher, endpoint=args.endpoint, model=args.model, api_key_env=args.api_key_env,
        cache_dir=session.cfg.model.cache_dir, device=session.cfg.device,
        timeout=args.timeout, max_new_tokens=args.max_new_tokens)
    report = synth.synthesize(pairs, teacher, args.out, args.tasks or synth.SYNTH_TASKS,
                              limit=args.limit, batch_size=args.batch_size,
                              progress=session.progress)
    print(report.summary())


def _load_model(args: argparse.Namespace, merge_lora: bool = False):
    """The model of ``--model``; ``merge_lora`` for plain inference (faster, but without the
    base decoder that diagnostics compare against)."""
    from llink.backbones.loading import resolve_device
    from llink.method.model import LLINK

    name = args.model or str(Path(Config().run_dir) / "stage_b")
    return LLINK.from_pretrained(name, device=resolve_device(args.device), merge_lora=merge_lora)


def _read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text)
    for i, text in enumerate(texts, 1):
        _require_utf8(text, f"text argument {i}")
    if args.file:
        if args.file == "-":
            lines = _read_stdin().splitlines()
        else:
            lines = _read_text_file(args.file).splitlines()
        texts += [line for line in lines if line.strip()]
    return texts


def _require_utf8(text: str, where: str) -> None:
    """Undecodable bytes reach Python as lone surrogates (argv, stdin): refuse them here."""
    from llink.inference.diagnostics import InputError

    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where} is not UTF-8 text; give UTF-8 text, one text per line"
                         ) from None


def _read_stdin() -> str:
    try:
        text = sys.stdin.read()
    except UnicodeDecodeError:
        text = "\udcff"  # a strict stdin: refused below like a surrogate-escaped one
    _require_utf8(text, "--file -: standard input")
    return text


def _read_text_file(name: str) -> str:
    """A ``--file`` argument's text, or an :class:`InputError` saying what is wrong."""
    from llink.inference.diagnostics import InputError

    path = Path(name)
    if path.is_dir():
        raise InputError(f"--file {name}: is a folder; give a UTF-8 text file, one text per line")
    if not path.exists():
        raise InputError(f"--file {name}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"--file {name}: not UTF-8 text (byte {exc.start} cannot be decoded); "
                         "give a UTF-8 text file, one text per line") from None
    except OSError as exc:
        raise InputError(f"--file {name}: cannot read it ({exc.strerror})") from None


def cmd_infer(args: argparse.Namespace) -> None:
    from llink.inference.diagnostics import InputError, check_inputs, compare

    texts = _read_texts(args)
    if args.task == "ask" and not args.question:
        raise InputError("--task ask needs --question 'a question about the text'")
    model = _load_model(args, merge_lora=not args.compare)
    model.use_prefix_cache()
    task = "ask" if args.question else args.task
    for w in check_inputs(texts, model.encoder.max_chars, task):
        print(f"llink: warning: {w}", file=sys.stderr)
    results = compare(model, texts, task, args.strict, args.gate_boost, args.question,
                      args.max_new_tokens, with_diagnostics=args.compare,
                      literal_bias=args.literal_bias)
    for r in results:
        if args.json:
            print(json.dumps(r.to_dict(), ensure_ascii=False))
            continue
        if len(results) > 1 or args.compare:
            print(f"> {r.text}")
        print(r.injected)
        if args.compare:
            print(f"  ablated: {r.ablated}\n  base:    {r.base}")
            for w in r.warnings:
                print(f"  WARNING: {w}")


def cmd_probe(args: argparse.Namespace) -> None:
    from llink.inference.diagnostics import check_inputs, lexeme_probe

    _require_utf8(args.text, "the text argument")
    model = _load_model(args)
    for w in check_inputs([args.text], model.encoder.max_chars, "translate_to_english"):
        print(f"llink: warning: {w}", file=sys.stderr)
    cands = [c for c in (args.candidates or "").split(",") if c.strip()]
    rep = lexeme_probe(model, args.text, cands, top=args.top)
    if args.json:
        print(json.dumps(rep, ensure_ascii=False, indent=1))
        return
    print("slot norms: " + " ".join(f"{x:.2f}" for x in rep["slot_norms"]))
    rows = zip(rep["nearest_vocab"], rep["next_tokens_injected"], rep["next_tokens_ablated"],
               strict=True)
    print(f"{'rank':>4}  {'nearest vocab row (cos)':<28}  {'next token, injected':<28}  "
          "next token, ablated")
    for i, (a, b, c) in enumerate(rows, start=1):
        print(f"{i:>4}  {a['token']!r:<20} {a['score']:>6.3f}  {b['token']!r:<20} "
              f"{b['score']:>6.2f}  {c['token']!r:<20} {c['score']:>6.2f}")
    if rep["candidates"]:
        print(f"\n{'candidate':<16} {'token':<14} {'rank':>7} {'cosine':>7} {'logit inj':>9} "
              f"{'logit abl':>9} {'delta':>7}")
        for c in rep["candidates"]:
            print(f"{c['word']:<16} {c['token']!r:<14} {c['vocab_rank']:>7} {c['cosine']:>7.3f} "
                  f"{c['logit_injected']:>9.2f} {c['logit_ablated']:>9.2f} "
                  f"{c['logit_delta']:>+7.2f}")


def cmd_batch(args: argparse.Namespace) -> None:
    from llink.inference.diagnostics import batch_diversity, check_inputs

    texts = _read_texts(args)
    model = _load_model(args)
    for w in check_inputs(texts, model.encoder.max_chars, "translate_to_english"):
        print(f"llink: warning: {w}", file=sys.stderr)
    rep = batch_diversity(model, texts)
    if args.json:
        print(json.dumps(rep, ensure_ascii=False, indent=1))
        return
    print(f"{len(texts)} texts: pairwise cosine mean {rep['mean_cosine']:.3f}, "
          f"max {rep['max_cosine']:.3f}")
    for i, (t, n) in enumerate(zip(texts, rep["norms"], strict=True), start=1):
        print(f"  {i:>2}. norm {n:7.2f}  {t[:60]}")
    print(rep["verdict"])


def cmd_eval_retrieval(args: argparse.Namespace) -> None:
    from llink.workflows import evaluate_retrieval

    evaluate_retrieval(_session(args), stage_a_dir=args.stage_a, pairs_file=args.pairs,
                       baselines=not args.no_baselines)


def cmd_eval_holdout(args: argparse.Namespace) -> None:
    from llink.workflows import evaluate_holdout

    sources = [x.strip() for x in args.sources.split(",") if x.strip()] if args.sources else None
    evaluate_holdout(_session(args), sources, min_pairs=args.min_pairs)


def cmd_report(args: argparse.Namespace) -> None:
    from llink.reporting.report import write_report

    out = write_report(args.run_dir, out=args.out, fmt=args.format, examples=args.examples)
    print(f"report written: {out}")


def cmd_card(args: argparse.Namespace) -> None:
    from llink.reporting.card import write_model_card

    model = args.model or str(Path(args.run_dir) / "stage_b")
    print(f"model card written: {write_model_card(model, args.run_dir, out=args.out)}")


def cmd_push(args: argparse.Namespace) -> None:
    from llink.storage.hub import push_folder

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise ConfigError(f"--token-env {args.token_env}: that environment variable is "
                              "not set")
    url = push_folder(args.model, args.repo_id, private=args.private or None, token=token,
                      commit_message=args.message, revision=args.revision)
    print(f"pushed {args.model} to {args.repo_id}: {url}")


def cmd_logs(args: argparse.Namespace) -> None:
    from llink.reporting.logs import format_summary, summarise_logs

    res = summarise_logs(args.run_dirs, args.out)
    print(format_summary(res["rows"]))
    print(f"written: {res['summary']}, {res['records']} and {len(res['figures'])} plots "
          f"in {Path(args.out)}")


def cmd_export(args: argparse.Namespace) -> None:
    from llink.inference.export import export_llink

    check = export_llink(args.model, args.out, texts=args.text or None, device=args.device,
                         tolerance=args.tolerance)
    same = "yes" if check["same_next_tokens"] else "no"
    print(f"exported {args.model} to {args.out}: the decoder with its LoRA merged in "
          f"{Path(args.out) / 'decoder'}, the slot bridge and prompt format beside it")
    print(f"round trip on {check['texts']} texts: max abs logit difference "
          f"{check['max_abs_logit_diff']:.3g} (logits up to {check['max_abs_logit']:.3g}, "
          f"tolerance {check['tolerance']:g}), same next token at every position: {same}")


def cmd_serve(args: argparse.Namespace) -> None:
    import logging

    from llink.inference import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = serve.ServeSettings(
        max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
        max_body_bytes=args.max_body_bytes, max_foreign_chars=args.max_foreign_chars,
        max_tokens=args.max_tokens_limit, default_max_tokens=args.default_max_tokens,
        api_key=serve.api_key_from_env(args.api_key_env), read_timeout_s=args.read_timeout)
    backend = serve.load_backend(args.model, args.hf_model, args.device, name=args.served_name,
                                 engine=args.engine, slot_cache_size=args.slot_cache,
                                 literal_bias=args.literal_bias)
    serve.run_server(serve.make_server(backend, settings, args.host, args.port))


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="llink",
        description="LLINK: teach an English-centric LLM a new language by injecting a "
        "frozen multilingual encoder's sentence vectors as soft tokens.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parent, name: str, fn: Callable, help_: str, config: bool = True):
        p = parent.add_parser(name, help=help_, description=help_, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        if config:
            _add_config_args(p)
        p.set_defaults(func=fn)
        return p

    p = add(sub, "run", cmd_run,
            "the main job: data, models, Stage A, retrieval table, Stage B, test NLL")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: each training stage from its saved "
                        "state, a stage the run had not reached from its start")

    cfg_p = sub.add_parser("config", help="inspect configuration")
    cfg_sub = cfg_p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    add(cfg_sub, "show", cmd_config_show, "print the resolved config as JSON")

    data = sub.add_parser("data", help="corpora: harvest, split, tasks, synth")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = add(data_sub, "harvest", cmd_data_harvest,
            "build an English-foreign corpus from Debian's translation packages", config=False)
    p.add_argument("--lang", required=True,
                   help="language code(s) as Debian uses them, e.g. km or km,th,dz (several: "
                   "each package is downloaded once and every language read from it)")
    p.add_argument("--out", help="output .jsonl.gz of one language (default: en-LANG.jsonl.gz)")
    p.add_argument("--out-dir", type=Path,
                   help="output folder for any number of languages: DIR/en-LANG.jsonl.gz each")
    p.add_argument("--sources", nargs="+", default=list(HARVEST_SOURCES),
                   choices=list(HARVEST_SOURCES), help="which Debian sources to read")
    p.add_argument("--workdir", type=Path, help="download/unpack folder (default: temporary)")
    p.add_argument("--keep-workdir", action="store_true", help="keep downloaded packages")
    p.add_argument("--max-bytes", type=_positive_int, metavar="N",
                   help="cap each gzipped corpus at N bytes (pairs that are not sentence-like "
                        "are left out first)")
    add(data_sub, "split", cmd_data_split, "show the train/dev/test split and what was dropped")
    p = add(data_sub, "tasks", cmd_data_tasks,
            "write Stage B instruction examples (translate_to_english) of a split as JSONL")
    p.add_argument("--out", required=True, help="output .jsonl")
    p.add_argument("--split", default="train", choices=["train", "dev", "test"])

    p = add(data_sub, "synth", cmd_data_synth,
            "write synthetic Stage B examples (paraphrase, QA, titles, ...): a teacher LLM "
            "answers from the English side of each pair; resumable (appends to --out)")
    p.add_argument("--out", required=True, help="output .jsonl (appended to; reruns resume)")
    p.add_argument("--teacher", metavar="MODEL",
                   help="local causal LM: offline: name, hub id or folder "
                   "(default: offline:smollm2-135m-instruct)")
    p.add_argument("--endpoint", metavar="URL",
                   help="OpenAI-compatible chat-completions URL (or its /v1 base) instead")
    p.add_argument("--model", help="model name sent to --endpoint")
    p.add_argument("--api-key-env", metavar="VAR", help="env variable holding the endpoint's key")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="task types (default: all but translate_to_english)")
    p.add_argument("--split", default="train", choices=["train", "dev", "test"])
    p.add_argument("--limit", type=_positive_int, help="use at most N pairs of the split")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="prompts per teacher call")
    p.add_argument("--max-new-tokens", type=_positive_int, default=192,
                   help="reply length cap (tokens)")
    p.add_argument("--timeout", type=_positive_float, default=60.0,
                   help="endpoint timeout per request (s)")

    models = sub.add_parser("models", help="frozen encoder and decoder")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    add(models_sub, "prepare", cmd_models_prepare,
        "materialise the configured models (offline defaults are converted once)")

    train = sub.add_parser("train", help="training stages")
    train_sub = train.add_subparsers(dest="train_command", required=True, metavar="STAGE")
    p = add(train_sub, "stage-a", cmd_train_stage_a,
            "Stage A: contrastive projector on cached encoder vectors and teacher states")
    p.add_argument("--resume", action="store_true", help="continue from run_dir/stage_a-state")
    p = add(train_sub, "stage-b", cmd_train_stage_b,
            "Stage B: slot expander, gated adapter and LoRA on top of run_dir/stage_a")
    p.add_argument("--resume", action="store_true", help="continue from run_dir/stage_b-state")
    p = add(train_sub, "baseline", cmd_train_baseline,
            "direct fine-tuning baseline: LoRA on the decoder reading the raw foreign text "
            "(Stage B's LoRA settings, data, steps and batch)")
    p.add_argument("--resume", action="store_true", help="continue from run_dir/baseline-state")

    def model_args(p: argparse.ArgumentParser, many: bool) -> None:
        if many:
            p.add_argument("text", nargs="*", help="foreign text(s)")
            p.add_argument("--file", metavar="F", help="read one text per line ('-' = stdin)")
        else:
            p.add_argument("text", help="foreign text")
        p.add_argument("--model", metavar="DIR",
                       help="LLINK folder from `llink train stage-b` or a hub repository id "
                       "(default runs/default/stage_b)")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add(sub, "infer", cmd_infer,
            "answer in English about foreign text (default: translate it)", config=False)
    model_args(p, many=True)
    p.add_argument("--task", default="translate_to_english",
                   help="one of: " + ", ".join(_task_names()))
    p.add_argument("--question", help="a free-form question about the text (task 'ask')")
    p.add_argument("--strict", action="store_true", help="ask for the translation only")
    p.add_argument("--gate-boost", type=_gate_boost, default=1.0,
                   help="scale the gated adapter's contribution: a number in "
                   f"[0, {MAX_GATE_BOOST:g}] (1 = as trained, 0 = adapter off)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64,
                   help="answer length cap in tokens, >= 1 (default 64)")
    p.add_argument("--literal-bias", type=_non_negative_float, default=DEFAULT_LITERAL_BIAS,
                   metavar="X", help="nudge the answer to copy the text's numbers and Latin "
                   "words: add X to their next token's logit until written (default "
                   f"{DEFAULT_LITERAL_BIAS:g}; 0: off)")
    p.add_argument("--compare", action="store_true",
                   help="also show the output with slots ablated and the base decoder's")
    p = add(sub, "probe", cmd_probe,
            "what the slots encode: nearest vocabulary rows, next-token shifts", config=False)
    model_args(p, many=False)
    p.add_argument("--candidates", help="comma-separated English words to rank")
    p.add_argument("--top", type=_positive_int, default=30)
    p = add(sub, "batch", cmd_batch,
            "pairwise cosine and norms of projected vectors (collapse check)", config=False)
    model_args(p, many=True)

    ev = sub.add_parser("eval", help="evaluations")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="EVAL")
    p = add(ev_sub, "retrieval", cmd_eval_retrieval,
            "R@1/5/10, MRR and mean rank of foreign → English retrieval, with baselines")
    p.add_argument("--stage-a", metavar="DIR", help="Stage A artifact (default: RUN_DIR/stage_a)")
    p.add_argument("--pairs", metavar="FILE", help="evaluate on this pair file instead of test")
    p.add_argument("--no-baselines", action="store_true", help="only the trained projector")
    p = add(ev_sub, "holdout", cmd_eval_holdout,
            "leave-one-source-out retrieval: Stage A trained without a source, tested on it, "
            "beside Stage A trained with it and the encoder's own -> RUN_DIR/eval/holdout.json")
    p.add_argument("--sources", help="comma-separated source groups (default: every source "
                   "with at least --min-pairs test pairs)")
    p.add_argument("--min-pairs", type=int, default=100,
                   help="smallest test pool a source needs (default 100)")
    p = add(ev_sub, "nll", cmd_eval_nll,
            "answer NLL per token on test pairs: slots injected, ablated, base decoder on raw text")
    p.add_argument("--model", metavar="DIR", help="LLINK model folder (default: RUN_DIR/stage_b)")
    p.add_argument("--limit", type=_positive_int,
                   help="test pairs to use, a hash sample spread over the split "
                   "(default: eval.nll_n, 256)")
    p.add_argument("--pairs", metavar="FILE",
                   help="use the pairs of this file instead of the test split (e.g. the "
                   "out-of-domain UDHR set) -> RUN_DIR/eval/nll-<name>.json")
    p = add(ev_sub, "gen", cmd_eval_gen,
            "generate on the test split per system, chrF/BLEU with bootstrap CIs and paired "
            "tests -> RUN_DIR/eval/gen.json (resumable)")
    p.add_argument("--systems",
                   help="comma-separated: llink, base (raw text, no LoRA), baseline (direct "
                   "fine-tune), ablated (slots ablated); default: eval.gen_systems (llink,base)")
    p.add_argument("--n", type=_positive_int, help="test items, a hash sample spread over the "
                   "split (default: eval.gen_n, 500)")
    p.add_argument("--max-new-tokens", type=_positive_int,
                   help="answer length cap (default: eval.max_new_tokens, 48)")
    p.add_argument("--batch-size", type=_positive_int,
                   help="prompts per generate call (default: eval.batch_size, 32)")
    p.add_argument("--literal-bias", type=_non_negative_float, metavar="X",
                   help="nudge LLINK to copy the text's numbers and Latin words: add X to "
                   "their next token's logit until written (default: eval.literal_bias, "
                   f"{DEFAULT_LITERAL_BIAS:g}; 0: off)")
    p.add_argument("--model", metavar="DIR", help="LLINK model folder (default: RUN_DIR/stage_b)")
    p.add_argument("--baseline", metavar="DIR",
                   help="baseline folder (default: RUN_DIR/baseline)")
    p.add_argument("--pairs", metavar="FILE",
                   help="translate every pair of this file instead of the test split (e.g. "
                   "the out-of-domain set src/llink/corpora/eval/udhr-en-km.jsonl) -> "
                   "RUN_DIR/eval/gen-NAME.json")
    p.add_argument("--numbers", action="store_true",
                   help="only test items whose reference has a number (all of them, or the "
                   "first --n in hash order), scored for numeric fidelity too -> "
                   "RUN_DIR/eval/gen-numbers.json")
    p.add_argument("--strict", action="store_true",
                   help="ask for the translation only, as `llink infer --strict` (the main job "
                   "uses it for the everyday sentences, "
                   "src/llink/corpora/eval/everyday-en-km.jsonl, whose 'accept' key words "
                   "also score each answer right or wrong)")
    p = add(ev_sub, "judge", cmd_eval_judge,
            "LLM judge: pairwise preference of two systems' saved generations, both orders "
            "-> RUN_DIR/eval/judge.json")
    p.add_argument("--a", default="llink", help="first system (default llink)")
    p.add_argument("--b", default="base", help="second system (default base)")
    p.add_argument("--judge", metavar="MODEL",
                   help="local causal LM: hub id, folder or offline name "
                   "(e.g. offline:qwen2.5-coder-0.5b-instruct)")
    p.add_argument("--judge-url", metavar="URL", help="OpenAI-compatible chat endpoint instead")
    p.add_argument("--judge-model", metavar="NAME", help="model name sent to --judge-url")
    p.add_argument("--api-key-env", metavar="VAR", help="env variable holding the endpoint key")
    p.add_argument("--n", type=_positive_int, default=100, help="first N items (default 100)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="judge prompts per call")
    p = add(ev_sub, "tokens", cmd_eval_tokens,
            "decoder tokens of the test foreign texts vs English references vs the K+2 slots")
    p.add_argument("--n", type=_positive_int, help="first N test items (default: all)")
    p = add(ev_sub, "numbers", cmd_eval_numbers,
            "numeric fidelity of the saved generations: references with numbers whose numbers "
            "all appear in the output")
    p.add_argument("--systems", help="comma-separated systems (default: all in RUN_DIR/eval/gen)")
    p = add(sub, "report", cmd_report, "write one self-contained report of a run folder: "
            "config, data, training curves, evaluation tables and example generations",
            config=False)
    p.add_argument("run_dir", help="run folder (e.g. runs/default)")
    p.add_argument("--out", metavar="FILE", help="output file (default RUN_DIR/report.html|md)")
    p.add_argument("--format", choices=["html", "md"], default="html",
                   help="html: one file with embedded plots; md: Markdown + PNG files")
    p.add_argument("--examples", type=_count, default=12, help="example generations to show")
    p = add(sub, "card", cmd_card, "write the model card (README.md) of a run's LLINK model: "
            "base models, languages, training data and licences, the held-out results measured "
            "on its weights, intended use, limits", config=False)
    p.add_argument("run_dir", help="run folder (e.g. runs/default)")
    p.add_argument("--model", metavar="DIR", help="LLINK folder (default RUN_DIR/stage_b)")
    p.add_argument("--out", metavar="FILE", help="output file (default MODEL/README.md)")
    p = add(sub, "push", cmd_push, "upload an LLINK folder (with its model card) to a Hugging "
            "Face hub repository; load it back with LLINK.from_pretrained(REPO_ID) or "
            "`llink infer --model REPO_ID`", config=False)
    p.add_argument("model", metavar="MODEL_DIR", help="LLINK folder (e.g. runs/default/stage_b)")
    p.add_argument("repo_id", metavar="REPO_ID", help="hub repository, owner/name (created if "
                   "missing)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--message", help="commit message")
    p.add_argument("--revision", help="branch to push to (default: main)")
    p.add_argument("--token-env", metavar="VAR", help="env variable holding a hub token with "
                   "write access (default: the token of `hf auth login`, or HF_TOKEN)")
    p = add(sub, "logs", cmd_logs, "summarise the JSONL training logs of one or many runs "
            "into CSV files and comparison plots", config=False)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders to compare")
    p.add_argument("--out", default="runs/logs-summary", metavar="DIR",
                   help="output folder (default runs/logs-summary)")
    p = add(sub, "export", cmd_export, "write a trained LLINK model as a plain Hugging Face "
            "decoder (LoRA merged) plus the bridge and prompt format that build its prompt "
            "embeddings, and check the round trip (same logits as the LLINK model)",
            config=False)
    p.add_argument("model", metavar="MODEL_DIR", help="LLINK folder (e.g. runs/default/stage_b) "
                   "or a hub repository id")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="export folder (new, empty, or an earlier export: it is replaced)")
    p.add_argument("--text", action="append", metavar="TEXT",
                   help="a foreign text for the round-trip check (repeatable; default: four "
                   "built-in samples)")
    p.add_argument("--tolerance", type=_positive_float, default=1e-3,
                   help="largest max abs logit difference accepted (default 1e-3)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p = add(sub, "serve", cmd_serve, "HTTP server with an OpenAI-compatible chat-completions "
            "endpoint (POST /v1/chat/completions, GET /v1/models, GET /health)", config=False)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="DIR", help="LLINK folder from `llink train stage-b` "
                     "(--engine vllm: an export folder from `llink export`)")
    src.add_argument("--hf-model", metavar="NAME",
                     help="serve a plain causal LM instead: hub id, folder or offline:NAME")
    p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers",
                   help="what runs the decoder: transformers in this process (default), or a "
                   "vLLM engine given prompt embeddings (needs a GPU and "
                   "pip install 'llink[vllm]')")
    p.add_argument("--served-name", metavar="NAME", help="model name reported to clients")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: any free)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--max-batch", type=_positive_int, default=8,
                   help="requests per generate call")
    p.add_argument("--batch-wait-ms", type=_non_negative_float, default=10.0,
                   help="how long a batch waits for more requests (default 10)")
    p.add_argument("--max-body-bytes", type=_positive_int, default=1 << 20,
                   help="request body limit")
    p.add_argument("--max-foreign-chars", type=_positive_int, default=4000,
                   help="foreign text limit")
    p.add_argument("--max-tokens-limit", type=_positive_int, default=512,
                   help="the largest max_tokens a request may ask for")
    p.add_argument("--default-max-tokens", type=_positive_int, default=128,
                   help="max_tokens of requests that give none")
    p.add_argument("--api-key-env", metavar="VAR",
                   help="require 'Authorization: Bearer KEY', KEY read from env variable VAR")
    p.add_argument("--read-timeout", type=_positive_float, default=30.0, metavar="S",
                   help="seconds a client may take to send its request body; a shorter body "
                   "than its Content-Length gets a 408 after that (default 30)")
    p.add_argument("--slot-cache", type=_count, default=256, metavar="N",
                   help="keep the slots of the last N foreign texts, so follow-up questions "
                   "about a text skip the encoder (default 256; 0: off)")
    p.add_argument("--literal-bias", type=_non_negative_float, default=DEFAULT_LITERAL_BIAS,
                   metavar="X", help="LLINK models: push the foreign text's numbers and Latin "
                   "words into the answer, X added to their next token's logit until written "
                   f"(default {DEFAULT_LITERAL_BIAS:g}; 0: off; not with --engine vllm)")
    return parser


def _task_names() -> list[str]:
    from llink.method.inject import TASKS

    return list(TASKS)


def _user_errors() -> tuple[type[BaseException], ...]:
    from llink.backbones.offline import ModelUnavailable, OfflineModelUnavailable
    from llink.data.harvest import HarvestError
    from llink.data.synth import SynthError
    from llink.eval import EvalError
    from llink.inference.api import ServeError
    from llink.inference.diagnostics import InputError
    from llink.method.inject import UnknownTaskError
    from llink.remote.chat_client import EndpointError
    from llink.storage.fileio import JsonFileError
    from llink.storage.hub import HubError

    return (ConfigError, PairFileError, CheckpointError, FileNotFoundError,
            OfflineModelUnavailable, ModelUnavailable, HarvestError, UnknownTaskError,
            SynthError, EndpointError, InputError, ServeError, JsonFileError, EvalError,
            HubError)


def _quiet_transformers() -> None:
    """transformers' own "Loading weights" bars are noise next to llink's progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


#: Libraries whose deprecation notices are for llink's developers, not its users (e.g.
#: peft reads transformers' deprecated ``is_gradient_checkpointing`` on every LoRA load).
_QUIET_LIBRARIES = r"(transformers|peft|accelerate|huggingface_hub|safetensors|tokenizers)(\.|$)"


def _quiet_library_deprecations() -> None:
    """No library FutureWarning/DeprecationWarning on a user-facing command; llink's own
    warnings and every other warning still show."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_QUIET_LIBRARIES)


def _leave_process_group() -> None:
    """End a `torchrun` / `accelerate launch` run cleanly (no-op in a single process)."""
    if "llink.train.distributed" in sys.modules:  # imported by every command that could start one
        sys.modules["llink.train.distributed"].shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llink`` console script."""
    args = build_parser().parse_args(argv)
    _quiet_library_deprecations()
    _quiet_transformers()
    try:
        args.func(args)
        _leave_process_group()
    except _user_errors() as exc:
        if os.environ.get("LLINK_DEBUG"):
            raise
        print(f"llink: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        saved = f"{exc}: " if str(exc) else "interrupted; "  # TrainingStopped says where
        print(f"llink: {saved}rerun with --resume to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
