"""A driver's working dir is every function process's code (where it runs, first on its path), as
openYuanrong's `Config.working_dir` has it; and several results of one call (`return_nums`)."""

import os

import yr


def test_the_working_dir_is_the_functions_code(session, tmp_path):
    (tmp_path / "helpers_for_yr_test.py").write_text("def triple(x):\n    return 3 * x\n")
    (tmp_path / "data.txt").write_text("from the working dir\n")
    yr.init(yr.Config(session=session, working_dir=str(tmp_path)))
    try:
        @yr.invoke
        def use_helper(x):
            import helpers_for_yr_test  # importable only from the working dir
            with open("data.txt") as f:  # relative to the process's cwd
                return helpers_for_yr_test.triple(x), f.read().strip(), os.getcwd()

        value, text, _ = yr.get(use_helper.invoke(14), timeout=120)
        assert (value, text) == (42, "from the working dir")

        @yr.invoke(return_nums=2)
        def divmod_remote(a, b):
            return divmod(a, b)

        q, r = divmod_remote.invoke(17, 5)
        assert (yr.get(q), yr.get(r)) == (3, 2)
        assert yr.get([q, r]) == [3, 2]
    finally:
        yr.finalize()
