"""The `bayes-planet` command line, run as a user would."""

import subprocess
import sys

from agents.cli import main


def test_random_command_writes_a_video_and_prints_the_return(tmp_path, capsys):
    assert main(["random", "--task", "dmc:cartpole-swingup", "--out", str(tmp_path)]) == 0
    assert "random policy on dmc:cartpole-swingup: return" in capsys.readouterr().out
    assert (tmp_path / "random_episode.gif").stat().st_size > 1000


def test_bad_task_is_one_line_and_exit_code_2():
    result = subprocess.run([sys.executable, "-m", "agents.cli", "random", "--task", "dmc:foo-bar"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("bayes-planet: error: --task: unknown DeepMind Control")
