"""Studies: an experiment that trains or loads runs and measures a question, with its results table.

    python -m experiments.studies.quality_vs_cost   quality (eval bpb) against inference cost across the ladder
    python -m experiments.studies.sft_sotu          a supervised task from the corpus: who delivered this passage?
    python -m experiments.studies.resume_soak       kill a tiny run at random moments N times; count bitwise resumes

Their measured outputs and commands: experiments/results/.
"""
