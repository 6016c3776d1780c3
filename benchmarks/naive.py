"""The script users write today, as the baseline of `make bench`: import both frameworks, load the whole
checkpoint with its framework's own loader, move every tensor through numpy (the transposes come from
parity's layout rows, so that only the way of working differs), and save with the other framework.

    python benchmarks/naive.py paddle X.pt X.pdparams       # torch.jit.load -> paddle.save
    python benchmarks/naive.py torch X.pdparams X.pt        # paddle.load -> torch.save
    python benchmarks/naive.py safetensors X.pt X.safetensors
"""
import sys
import warnings


def main(mode: str, src: str, out: str) -> None:
    warnings.simplefilter("ignore")
    import paddle
    import torch

    from parity import layouts

    if mode == "torch":
        loaded = paddle.load(src)
        loaded.pop("parity@@extras", None)
        state = {k: v.numpy() for k, v in loaded.items()}
        torch_state, _ = layouts.to_hub(state, "paddle")
        torch.save({k: torch.from_numpy(v) for k, v in torch_state.items()}, out)
        return
    state = torch.jit.load(src, map_location="cpu").state_dict()
    if mode == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, out)
        return
    paddle_state, _ = layouts.to_layout({k: v.numpy() for k, v in state.items()}, "paddle")
    paddle.save({k: paddle.to_tensor(v) for k, v in paddle_state.items()}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
