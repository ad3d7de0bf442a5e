"""Demos and research reports: the `shira` command's demo, web page, demo-model builder and reports.

They use the product (shira_toolchain, shira_runtime); the product never imports them.
"""
