from setuptools import find_packages, setup
setup(name='mmrefseg', version='0.1.0', packages=find_packages(include=['mmrefseg*']))
