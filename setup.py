from glob import glob

from setuptools import find_packages, setup

from websmsd import __version__

setup(
    name="websmsd",
    version=__version__,
    description="SMS bridge between Asterisk and ITSPs, GSM gateways and phones",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["websmsd", "websmsd.*"]) + ["twisted.plugins"],
    # Says what the default already is, and that is the point: with every package under
    # the root, `pip install -e .` (PEP 660, setuptools >= 64) puts the source tree on
    # sys.path in a .pth file, so twistd finds twisted/plugins/websmsd_plugin.py, instead
    # of an import hook that serves websmsd.* and twisted.plugins by name but hides the
    # dropin from Twisted's scan of sys.path for twisted/plugins/ directories.
    package_dir={"": "."},
    package_data={
        "websmsd": ["schema/*.sql"],
        "twisted": ["plugins/websmsd_plugin.py"],
    },
    # The status page's templates and static files (websmsd.http.pages.web_dir finds
    # them here, or in web/ of the source tree).
    data_files=[(f"share/websmsd/{d}", sorted(glob(f"{d}/*")))
                for d in ("web/templates", "web/static")],
    install_requires=[
        "Twisted>=22.4",
        "treq>=22.2",
        "pyOpenSSL",
        "service-identity",
    ],
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "websms = websmsd.cli:websms_main",
            "websmsd = websmsd.cli:websmsd_main",
        ]
    },
)
