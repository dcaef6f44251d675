"""CLI verbs for blending, merging, resizing and Ollama export: `blend`, `merge`, `resize`, `export-ollama`.

Thin front doors onto studio.ml.blend.weighted, studio.ml.export.library_export, studio.ml.export.gguf and
studio.ml.blend.resize; heavy imports happen inside
the verbs. Progress goes to stderr, the result to stdout (one JSON object with --json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.cli.verb import AddParser, Output, VerbGroup, open_library, print_progress, verb
from studio.core.blend.checks import METHOD_HELP, METHODS
from studio.core.errors import StudioError
from studio.core.paths import DataDir
from studio.core.train.estimator import format_bytes


def _smoke_line(smoke) -> str:
    return f"Smoke test: asked {smoke.prompt!r}, answered {smoke.answer!r} ({smoke.message})."


@verb("blend", "blend two or more adapters into a new one (peft add_weighted_adapter)")
def cmd_blend(args: argparse.Namespace, data: DataDir) -> Output:
    if args.list_methods:
        return Output({"methods": METHOD_HELP},
                      "\n".join(f"{m:20} {METHOD_HELP[m]}" for m in METHODS))
    library = open_library(data)
    if args.remake:
        source = library.get(args.remake)
        recipe = source.manifest.lineage.recipe
        if not recipe:
            raise StudioError(f"{source.manifest.name!r} has no blend recipe to remake.",
                              hint="Only adapters made by `blend` carry one.")
        if not args.name:
            raise StudioError("--name is required.", hint="Name the remade blend, e.g. --name 'v2'.")
        from studio.core.blend.checks import BlendRecipe

        parsed = BlendRecipe.from_dict(recipe)
        args.adapters, args.method = parsed.parents, parsed.method
        args.weights = args.weights or parsed.weights
        args.density = parsed.density if args.density is None else args.density
        args.rank = parsed.rank if args.rank is None else args.rank
        args.seed = parsed.seed if args.seed is None else args.seed
    if len(args.adapters) < 2:
        raise StudioError("Name at least two adapters to blend.", hint="lora-studio blend A B --name NEW")
    weights = args.weights or [1.0] * len(args.adapters)
    from studio.core.blend.checks import check_blend, facts_of_entries

    entries = [library.get(ref) for ref in args.adapters]
    plan = check_blend(facts_of_entries(entries), weights, args.method, density=args.density,
                       rank=args.rank, seed=args.seed or 0)
    described = (f"{plan.recipe.method} of " + ", ".join(f"{n} x {w:g}" for n, w in
                                                        zip(plan.recipe.parent_names, plan.recipe.weights, strict=True))
                 + f" -> rank {plan.result_rank}{' (exact)' if plan.exact else ''}")
    warnings = "".join(f"\nwarning: {w}" for w in plan.warnings)
    if args.check:
        return Output({"plan": plan.to_dict()}, f"OK: {described}{warnings}")
    if not args.name:
        raise StudioError("--name is required.", hint="Name the new adapter, e.g. --name 'persona+skill'.")
    from studio.ml.blend.weighted import blend_adapters

    entry = blend_adapters(library, [e.id for e in entries], weights, args.method, args.name,
                           density=args.density, rank=args.rank, seed=args.seed or 0, data=data,
                           progress=print_progress)
    return Output({**entry.to_dict(), "plan": plan.to_dict()},
                  f"Blended {described}\nSaved as {entry.manifest.name} ({entry.id}){warnings}")


@verb("merge", "merge an adapter into its base and export a standalone model (HF safetensors or GGUF)")
def cmd_merge(args: argparse.Namespace, data: DataDir) -> Output:
    dest = args.out or args.dest
    if not dest:
        raise StudioError("Give the destination folder.", hint="lora-studio merge ADAPTER DEST (or --out DEST)")
    kwargs = {"probe": args.probe} if args.probe else {}
    if args.format == "gguf":
        from studio.core.library.store import slugify
        from studio.ml.export.gguf import merge_to_gguf
        from studio.ml.export.library_export import base_model_for

        library = open_library(data)
        entry = library.get(args.adapter)
        target = Path(dest) / f"{slugify(entry.manifest.name)}.gguf" if Path(dest).is_dir() else Path(dest)
        result = merge_to_gguf(base_model_for(library, entry).path, entry.path, target, args.gguf_type,
                               name=entry.manifest.name, progress=print_progress, **kwargs)
        warnings = "".join(f"\nwarning: {w}" for w in result.warnings)
        smoke = result.metadata.get("smoke", {})
        return Output(result.to_dict(), f"Merged GGUF model ({result.dtype}, {format_bytes(result.size_bytes)}) "
                                        f"written to {result.path}\nSmoke test (before conversion): asked "
                                        f"{smoke.get('prompt')!r}, answered {smoke.get('answer')!r}.{warnings}")
    from studio.ml.export.library_export import merge_adapter

    result = merge_adapter(open_library(data), args.adapter, Path(dest), args.dtype,
                           max_shard_size=args.shard_size, progress=print_progress, **kwargs)
    return Output(result.to_dict(), f"Merged model ({result.dtype}, {format_bytes(result.size_bytes)}) "
                                    f"written to {result.path}\n{_smoke_line(result.smoke)}")


@verb("resize", "reduce an adapter's rank by SVD into a new adapter (reports the energy kept)")
def cmd_resize(args: argparse.Namespace, data: DataDir) -> Output:
    from studio.ml.blend.resize import resize_adapter

    result = resize_adapter(open_library(data), args.adapter, args.rank, args.name, progress=print_progress)
    weakest = f"{result.min_layer_energy:.1%} in {result.min_layer}"
    return Output(result.to_dict(), f"Resized rank {result.previous_rank} -> {result.rank}: kept "
                                    f"{result.retained_energy:.1%} of the energy overall, weakest module "
                                    f"{weakest}.\nSaved as {result.entry.manifest.name} ({result.entry.id})")


@verb("export-ollama", "export an adapter as an Ollama bundle (Modelfile + adapter files)")
def cmd_export_ollama(args: argparse.Namespace, data: DataDir) -> Output:
    from studio.ml.export.library_export import export_adapter

    result = export_adapter(open_library(data), args.adapter, Path(args.dest), "ollama", from_ref=args.from_ref,
                            system=args.system, progress=print_progress, probe=args.probe)
    warnings = "".join(f"\nwarning: {w}" for w in result.warnings)
    return Output(result.to_dict(), f"Ollama bundle written to {result.path}\n"
                                    f"Create it with: cd {result.path} && ollama create NAME -f Modelfile\n"
                                    f"{_smoke_line(result.smoke)}{warnings}")


def _parsers(add: AddParser) -> None:
    p = add("blend")
    p.add_argument("adapters", nargs="*", help="two or more adapter ids or names")
    p.add_argument("--weights", nargs="+", type=float, help="one weight per adapter (default 1 each; "
                                                           "negative subtracts)")
    p.add_argument("--method", choices=METHODS, default="exact",
                   help="how to combine (default exact = cat); see --list-methods")
    p.add_argument("--name", help="name of the new adapter")
    p.add_argument("--density", type=float, help="fraction kept by ties/dare/magnitude_prune (default 0.5)")
    p.add_argument("--rank", type=int, help="target rank of the SVD methods (default: the largest rank)")
    p.add_argument("--seed", type=int, help="random seed of the DARE methods (default 0)")
    p.add_argument("--check", action="store_true", help="only check compatibility; blend nothing")
    p.add_argument("--remake", metavar="ADAPTER", help="blend again from this blend's recipe")
    p.add_argument("--list-methods", action="store_true", help="explain the methods and exit")
    p = add("merge")
    p.add_argument("adapter", help="adapter id or name")
    p.add_argument("dest", nargs="?", help="new folder for the merged model")
    p.add_argument("--out", help="same as DEST")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="HF format only")
    p.add_argument("--format", choices=("hf", "gguf"), default="hf",
                   help="hf: a Hugging Face folder (default); gguf: one GGUF file for llama.cpp / LM Studio / "
                        "Ollama (Llama-family bases; DEST is a .gguf file or a folder)")
    p.add_argument("--gguf-type", choices=("f16", "bf16", "f32"), default="f16",
                   help="tensor type of a GGUF model (default f16)")
    p.add_argument("--shard-size", default="2GB", help="largest safetensors shard (default 2GB)")
    p.add_argument("--probe", help="smoke-test prompt (default: What is the capital of France?)")
    p = add("resize")
    p.add_argument("adapter", help="adapter id or name")
    p.add_argument("--rank", type=int, required=True, help="the new, smaller rank")
    p.add_argument("--name", required=True, help="name of the new adapter")
    p = add("export-ollama")
    p.add_argument("adapter", help="adapter id or name")
    p.add_argument("dest", help="new folder for the bundle")
    p.add_argument("--from", dest="from_ref",
                   help="Ollama base for FROM, e.g. smollm2:135m (default: the base model's folder)")
    p.add_argument("--system", help="a SYSTEM prompt for the Modelfile")
    p.add_argument("--probe", help="smoke-test prompt (default: What is the capital of France?)")


GROUP = VerbGroup((cmd_blend, cmd_merge, cmd_resize, cmd_export_ollama), _parsers)
